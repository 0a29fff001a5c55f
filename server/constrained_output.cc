#include "server/constrained_output.h"

#include <cerrno>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "sampling/grammar.h"
#include "sampling/json_schema_grammar.h"
#include "sampling/tokenizer_vocabulary.h"

namespace moeflow::server {
namespace {

using ordered_json = nlohmann::ordered_json;

// JSON mode: any object (Ollama's json grammar, OpenAI's json_object).
const ordered_json& JsonModeSchema() {
  static const ordered_json* schema = new ordered_json(ordered_json::parse(R"({"type":"object"})"));
  return *schema;
}

// `body` re-read with its objects' keys in the order they were written
// (the schema's property order is the output's). The body parsed once
// already, so this does too.
ordered_json Ordered(absl::string_view raw_body) {
  return ordered_json::parse(raw_body.begin(), raw_body.end(), nullptr, /*allow_exceptions=*/false);
}

// The grammar of `schema` into `sampler`, or a 400 naming `param`.
bool UseSchema(GrammarCache& cache, const ordered_json& schema, const std::string& param,
               const std::string& what, sampling::SamplerOptions* sampler, ApiError* error) {
  absl::StatusOr<std::shared_ptr<const sampling::TokenGrammar>> grammar = cache.ForSchema(schema);
  if (!grammar.ok()) {
    *error = {400, absl::StrCat("Invalid schema for ", what, ": ", grammar.status().message()),
              param, "invalid_value"};
    return false;
  }
  sampler->grammar = *std::move(grammar);
  return true;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const sampling::TokenGrammar>> GrammarCache::ForSchema(
    const ordered_json& schema) {
  const std::string key = schema.dump();
  absl::MutexLock lock(&mu_);
  for (auto it = schemas_.begin(); it != schemas_.end(); ++it) {
    if (it->first == key) {
      schemas_.splice(schemas_.begin(), schemas_, it);
      return schemas_.front().second;
    }
  }
  absl::StatusOr<std::string> gbnf = sampling::JsonSchemaToGbnf(schema);
  if (!gbnf.ok()) return gbnf.status();
  absl::StatusOr<sampling::Grammar> parsed = sampling::Grammar::Parse(*gbnf);
  if (!parsed.ok()) return parsed.status();
  if (vocabulary_ == nullptr) vocabulary_ = sampling::VocabularyOf(*tokenizer_);
  auto grammar = std::make_shared<sampling::TokenGrammar>();
  grammar->grammar = std::make_shared<const sampling::Grammar>(*std::move(parsed));
  grammar->vocabulary = vocabulary_;
  ++compiled_;
  schemas_.emplace_front(key, grammar);
  if (schemas_.size() > kSchemas) schemas_.pop_back();
  return std::shared_ptr<const sampling::TokenGrammar>(std::move(grammar));
}

bool ReadResponseFormat(GrammarCache& cache, const json& body, absl::string_view raw_body,
                        sampling::SamplerOptions* sampler, ApiError* error) {
  auto it = body.find("response_format");
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_object()) {
    *error = TypeError("response_format", "an object", *it);
    return false;
  }
  auto type_it = it->find("type");
  if (type_it == it->end() || type_it->is_null()) {
    *error = {400, "Missing required parameter: 'response_format.type'.", "response_format.type",
              "missing_required_parameter"};
    return false;
  }
  if (!type_it->is_string()) {
    *error = TypeError("response_format.type", "a string", *type_it);
    return false;
  }
  const std::string type = type_it->get<std::string>();
  if (type == "text") return true;
  if (type != "json_object" && type != "json_schema") {
    *error =
        ValueError("response_format.type",
                   absl::StrCat("'", type, "' is not one of 'text', 'json_object', 'json_schema'"));
    return false;
  }
  const ordered_json ordered = Ordered(raw_body);
  const ordered_json& format = ordered.at("response_format");
  // llama.cpp's extension: {"type": "json_object", "schema": {...}}.
  if (format.contains("schema") && !format["schema"].is_null()) {
    return UseSchema(cache, format["schema"], "response_format.schema", "response_format", sampler,
                     error);
  }
  if (type == "json_object") {
    return UseSchema(cache, JsonModeSchema(), "response_format", "response_format", sampler, error);
  }
  auto spec = format.find("json_schema");
  if (spec == format.end() || spec->is_null()) {
    *error = {400, "Missing required parameter: 'response_format.json_schema'.",
              "response_format.json_schema", "missing_required_parameter"};
    return false;
  }
  if (!spec->is_object()) {
    *error = TypeError("response_format.json_schema", "an object", json::parse(spec->dump()));
    return false;
  }
  std::string name = "response_format";
  auto name_it = spec->find("name");
  if (name_it != spec->end() && name_it->is_string()) {
    name = absl::StrCat("response_format '", name_it->get<std::string>(), "'");
  }
  auto schema = spec->find("schema");
  if (schema == spec->end() || schema->is_null()) {
    // OpenAI allows leaving it out: any JSON value then ({}).
    return UseSchema(cache, ordered_json::object(), "response_format.json_schema.schema", name,
                     sampler, error);
  }
  return UseSchema(cache, *schema, "response_format.json_schema.schema", name, sampler, error);
}

bool ReadOllamaFormat(GrammarCache& cache, const json& body, absl::string_view raw_body,
                      sampling::SamplerOptions* sampler, ApiError* error) {
  auto it = body.find("format");
  if (it == body.end() || it->is_null()) return true;
  if (it->is_string()) {
    const std::string format = it->get<std::string>();
    if (format.empty()) return true;
    if (format == "json") {
      return UseSchema(cache, JsonModeSchema(), "format", "format", sampler, error);
    }
    *error = {400, absl::StrCat("invalid format: \"", format,
                                "\"; expected \"json\" or a JSON schema object")};
    return false;
  }
  if (!it->is_object()) {
    *error = {400, "invalid format: expected \"json\" or a JSON schema object"};
    return false;
  }
  const ordered_json ordered = Ordered(raw_body);
  return UseSchema(cache, ordered.at("format"), "format", "format", sampler, error);
}

bool ReadLogitBias(const json& body, int64_t vocab_size, sampling::SamplerOptions* sampler,
                   ApiError* error) {
  auto it = body.find("logit_bias");
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_object()) {
    *error = TypeError("logit_bias", "an object mapping token ids to numbers", *it);
    return false;
  }
  if (it->size() > 300) {
    *error = ValueError("logit_bias", absl::StrCat("at most 300 tokens, got ", it->size()));
    return false;
  }
  sampler->logit_bias.clear();
  for (auto entry = it->begin(); entry != it->end(); ++entry) {
    const std::string& key = entry.key();
    char* end = nullptr;
    errno = 0;
    const long long id = key.empty() ? -1 : std::strtoll(key.c_str(), &end, 10);
    if (key.empty() || errno != 0 || *end != '\0' || key[0] == '+' || key[0] == ' ' || id < 0 ||
        id >= vocab_size) {
      *error = ValueError("logit_bias", absl::StrCat("'", key, "' is not a token id of this model ",
                                                     "(0 to ", vocab_size - 1, ")"));
      return false;
    }
    if (!entry->is_number()) {
      *error = TypeError(absl::StrCat("logit_bias.", key), "a number", *entry);
      return false;
    }
    const double bias = entry->get<double>();
    if (!(bias >= -100 && bias <= 100)) {
      *error = ValueError(absl::StrCat("logit_bias.", key),
                          absl::StrCat("must be between -100 and 100, got ", Dump(*entry)));
      return false;
    }
    sampler->logit_bias.emplace_back(static_cast<int32_t>(id), static_cast<float>(bias));
  }
  return true;
}

}  // namespace moeflow::server
