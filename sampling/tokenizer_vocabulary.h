// The TokenVocabulary (token_vocabulary.h) of a BpeTokenizer: what each
// token id decodes to, which ids a grammar may produce (normal and byte
// tokens; not control, user-defined, unused or unknown ones, whose text is
// not model output), and EOS as the end token.
//
// Role in the data flow: the HTTP API builds it once per served model, the
// first time a request asks for constrained decoding; grammar_bench too.
// Thread-safety: reads the tokenizer only. Failure: none.
#ifndef MOEFLOW_SAMPLING_TOKENIZER_VOCABULARY_H_
#define MOEFLOW_SAMPLING_TOKENIZER_VOCABULARY_H_

#include <memory>

#include "sampling/token_vocabulary.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::sampling {

std::shared_ptr<const TokenVocabulary> VocabularyOf(const BpeTokenizer& tokenizer);

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_TOKENIZER_VOCABULARY_H_
