// Pre-tokenization: splitting text into the pieces that BPE encodes one by one.
//
// Role in the data flow: BpeTokenizer::Encode hands each stretch of text
// between special tokens to PreTokenizer::Split, then runs BPE on every piece.
// The DeepSeek tokenizers define their pre-tokenizer as a sequence of regex
// Splits (behavior "Isolated": matches and the gaps between them both become
// pieces, and every later regex runs on each piece separately). std::regex has
// no \p{..} and is slow, so each known sequence is implemented here as a
// hand-written scanner that reproduces the JavaScript (ECMAScript, "u" flag)
// semantics of the patterns, with the Unicode classes of unicode_tables.h:
//
//   kDeepseekV3  (tokenizer.json of DeepSeek-V3 / R1, GGUF pre "deepseek-v3"):
//     \p{N}{1,3}
//     [一-龥぀-ゟ゠-ヿ]+
//     [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+|
//         ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   kDeepseekLlm (DeepSeek-LLM / V2 / V2.5, GGUF pre "deepseek-llm"):
//     [\r\n]   \s?[A-Za-zµÀ-Ö...]+   \s?[!-/:-~！-／：-～‘-‟　-。]+   \s+$
//     [一-龥ࠀ-一가-퟿]+   \p{N}+
//
// \s is JavaScript's (Unicode White_Space minus U+0085 plus U+FEFF), as in the
// reference implementation (transformers.js); ids are identical to it on the
// peer_compare_test corpus. llama.cpp's own regex engine classifies U+0085,
// U+FEFF and U+2028 differently, so text containing those can tokenize
// differently there (9 of 3000 corpus strings for deepseek-v3, all of them
// with such a character; none for deepseek-llm). Invalid UTF-8 is split byte by
// byte: each byte that does not start a well-formed sequence is one code
// point of its own that belongs to no class (like a lone surrogate in a
// JavaScript string), so the pieces still cover the input exactly.
//
// Thread-safety: a PreTokenizer is immutable; Split may be called
// concurrently. Failure: the factory functions return Unimplemented naming the
// unknown pre-tokenizer or regex; Split never fails.
#ifndef MOEFLOW_TOKENIZER_PRE_TOKENIZER_H_
#define MOEFLOW_TOKENIZER_PRE_TOKENIZER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moeflow {

enum class PreTokenizerKind {
  kDeepseekV3,
  kDeepseekLlm,
};

// "deepseek-v3" / "deepseek-llm" (the GGUF tokenizer.ggml.pre spelling).
absl::string_view PreTokenizerKindName(PreTokenizerKind kind);

// From tokenizer.ggml.pre. Unimplemented for other names.
absl::StatusOr<PreTokenizerKind> PreTokenizerKindFromGgufName(absl::string_view pre);

// From the Regex patterns of a tokenizer.json Sequence of Split
// pre-tokenizers, in order. Unimplemented (quoting the first pattern that
// differs) unless they are exactly one of the known sequences.
absl::StatusOr<PreTokenizerKind> PreTokenizerKindFromSplitRegexes(
    const std::vector<std::string>& patterns);

// The Split regexes of `kind`, as tokenizer.json spells them.
const std::vector<std::string>& SplitRegexes(PreTokenizerKind kind);

class PreTokenizer {
 public:
  explicit PreTokenizer(PreTokenizerKind kind) : kind_(kind) {}

  PreTokenizerKind kind() const { return kind_; }

  // Appends the pieces of `text` to `pieces`, in order; concatenated they are
  // `text` (no byte is dropped). Empty text gives no piece.
  void Split(absl::string_view text, std::vector<absl::string_view>* pieces) const;

 private:
  PreTokenizerKind kind_;
};

}  // namespace moeflow

#endif  // MOEFLOW_TOKENIZER_PRE_TOKENIZER_H_
