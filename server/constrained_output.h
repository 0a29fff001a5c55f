// What a request asks of the shape of its output: OpenAI's response_format
// (json_object, json_schema) and Ollama's format ("json" or a schema) as a
// grammar for constrained decoding, and OpenAI's logit_bias, both into the
// request's SamplerOptions (sampler.h: the bias is added first, then the
// grammar masks what it does not allow).
//
// Role in the data flow: the protocol encoders (openai_protocol.h,
// ollama_protocol.h) call these while parsing a body; the grammar reaches
// the sampler of the request's sequence through GenerationRequest::sampler
// on every backend. GrammarCache (one per OpenAiApi) builds the model's
// token vocabulary (tokenizer_vocabulary.h) the first time a request asks
// for a format and keeps the last compiled schemas.
//
// JSON mode (json_object, "json") is the schema {"type": "object"}, as
// Ollama's json grammar; json_schema's schema (OpenAI: json_schema.schema;
// llama.cpp's extension: response_format.schema) goes through
// JsonSchemaToGbnf (json_schema_grammar.h, llama.cpp's behaviour) with its
// properties in the order the client wrote them. With a format, the output
// ends (EOS) only where the document is complete.
//
// Thread-safety: GrammarCache is thread-safe; the readers are pure.
// Failure: the readers return false and fill an ApiError (400, OpenAI
// param / code): a format that is not an object, an unknown type, a
// json_schema without an object `json_schema`, a schema the converter
// refuses (its message names the JSON pointer); logit_bias that is not an object, a key that is not
// a token id of this model, a value that is not a number in [-100, 100].
#ifndef MOEFLOW_SERVER_CONSTRAINED_OUTPUT_H_
#define MOEFLOW_SERVER_CONSTRAINED_OUTPUT_H_

#include <cstdint>
#include <list>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "sampling/grammar_constraint.h"
#include "sampling/sampler.h"
#include "server/api_json.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {

class GrammarCache {
 public:
  // Compiled schemas kept (by their JSON text).
  static constexpr size_t kSchemas = 16;

  // `tokenizer` must outlive the cache.
  explicit GrammarCache(const BpeTokenizer* tokenizer) : tokenizer_(tokenizer) {}

  // The grammar of `schema` over the model's tokens; InvalidArgument from
  // the converter or the grammar parser.
  absl::StatusOr<std::shared_ptr<const sampling::TokenGrammar>> ForSchema(
      const nlohmann::ordered_json& schema);

  // Schemas compiled so far (for tests: the cache's hits do not count).
  int64_t compiled() {
    absl::MutexLock lock(&mu_);
    return compiled_;
  }

 private:
  const BpeTokenizer* const tokenizer_;
  absl::Mutex mu_;
  std::shared_ptr<const sampling::TokenVocabulary> vocabulary_ ABSL_GUARDED_BY(mu_);
  // Most recently used first.
  std::list<std::pair<std::string, std::shared_ptr<const sampling::TokenGrammar>>> schemas_
      ABSL_GUARDED_BY(mu_);
  int64_t compiled_ ABSL_GUARDED_BY(mu_) = 0;
};

// OpenAI's body.response_format into sampler->grammar. `raw_body` is the
// request's JSON text (re-read to keep the schema's property order).
bool ReadResponseFormat(GrammarCache& cache, const json& body, absl::string_view raw_body,
                        sampling::SamplerOptions* sampler, ApiError* error);

// Ollama's body.format ("json", a schema object, or "" / absent: none).
bool ReadOllamaFormat(GrammarCache& cache, const json& body, absl::string_view raw_body,
                      sampling::SamplerOptions* sampler, ApiError* error);

// OpenAI's body.logit_bias ({"token id": bias}) into sampler->logit_bias.
bool ReadLogitBias(const json& body, int64_t vocab_size, sampling::SamplerOptions* sampler,
                   ApiError* error);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_CONSTRAINED_OUTPUT_H_
