// BpeTokenizer::FromHfJson*: reading a Hugging Face tokenizer.json (kept apart
// from bpe_tokenizer.cc so only this file pays for the JSON parser).
#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {
namespace {

using Json = nlohmann::json;

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

absl::Status Invalid(const std::string& name, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(name, ": ", field, ": ", what));
}

absl::Status Unsupported(const std::string& name, absl::string_view field, absl::string_view what) {
  return absl::UnimplementedError(absl::StrCat(name, ": ", field, ": ", what));
}

bool IsNullOrFalse(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() || (it->is_boolean() && !it->get<bool>());
}

bool IsNullOrEmptyString(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it == obj.end() || it->is_null() || (it->is_string() && it->get<std::string>().empty());
}

// The pre_tokenizer must be a Sequence of Isolated, non-inverted regex Splits
// followed by a ByteLevel step that neither adds a prefix space nor applies
// its own GPT-2 regex.
absl::StatusOr<PreTokenizerKind> ReadPreTokenizer(const Json& root, const std::string& name) {
  auto pre = root.find("pre_tokenizer");
  if (pre == root.end() || !pre->is_object()) {
    return Unsupported(name, "pre_tokenizer", "missing; expected a Sequence of Split + ByteLevel");
  }
  if (pre->value("type", "") != "Sequence" || !pre->contains("pretokenizers") ||
      !(*pre)["pretokenizers"].is_array()) {
    return Unsupported(
        name, "pre_tokenizer.type",
        absl::StrCat("\"", pre->value("type", ""), "\"; expected a Sequence of Split + ByteLevel"));
  }
  const Json& steps = (*pre)["pretokenizers"];
  std::vector<std::string> patterns;
  bool byte_level = false;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Json& step = steps[i];
    const std::string field = absl::StrCat("pre_tokenizer.pretokenizers[", i, "]");
    if (!step.is_object()) return Invalid(name, field, "not an object");
    const std::string type = step.value("type", "");
    if (byte_level) return Unsupported(name, field, "a step after ByteLevel");
    if (type == "Split") {
      auto pattern = step.find("pattern");
      if (pattern == step.end() || !pattern->is_object() || !pattern->contains("Regex") ||
          !(*pattern)["Regex"].is_string()) {
        return Unsupported(name, field + ".pattern", "only {\"Regex\": ...} patterns");
      }
      if (step.value("behavior", "") != "Isolated") {
        return Unsupported(name, field + ".behavior",
                           absl::StrCat("\"", step.value("behavior", ""), "\"; only Isolated"));
      }
      if (!IsNullOrFalse(step, "invert")) return Unsupported(name, field + ".invert", "true");
      patterns.push_back((*pattern)["Regex"].get<std::string>());
    } else if (type == "ByteLevel") {
      if (!IsNullOrFalse(step, "add_prefix_space")) {
        return Unsupported(name, field + ".add_prefix_space", "true");
      }
      auto use_regex = step.find("use_regex");
      if (use_regex == step.end() || !use_regex->is_boolean() || use_regex->get<bool>()) {
        return Unsupported(name, field + ".use_regex", "not false (the GPT-2 regex)");
      }
      byte_level = true;
    } else {
      return Unsupported(name, field + ".type", absl::StrCat("\"", type, "\""));
    }
  }
  if (!byte_level) return Unsupported(name, "pre_tokenizer", "no ByteLevel step");
  absl::StatusOr<PreTokenizerKind> kind = PreTokenizerKindFromSplitRegexes(patterns);
  if (!kind.ok()) return Unsupported(name, "pre_tokenizer", kind.status().message());
  return kind;
}

// bos_token / eos_token in tokenizer_config.json: a string or an AddedToken
// object with "content"; null or absent gives "".
std::string ConfigTokenContent(const Json& config, const char* key) {
  auto it = config.find(key);
  if (it == config.end()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromHfJsonFile(
    const std::string& path) {
  absl::StatusOr<std::string> json = ReadFile(path);
  if (!json.ok()) return json.status();
  std::string config;
  const size_t slash = path.rfind('/');
  const std::string config_path =
      (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
      "tokenizer_config.json";
  if (FileExists(config_path)) {
    absl::StatusOr<std::string> c = ReadFile(config_path);
    if (!c.ok()) return c.status();
    config = std::move(*c);
  }
  return FromHfJson(*json, config, path);
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromHfJson(
    absl::string_view json_text, absl::string_view config_text, const std::string& name) {
  const Json root = Json::parse(json_text.begin(), json_text.end(), nullptr,
                                /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": not a JSON object"));
  }
  BpeVocabulary vocab;
  vocab.source = name;

  auto normalizer = root.find("normalizer");
  if (normalizer != root.end() && !normalizer->is_null()) {
    const bool empty_sequence =
        normalizer->is_object() && normalizer->value("type", "") == "Sequence" &&
        normalizer->contains("normalizers") && (*normalizer)["normalizers"].is_array() &&
        (*normalizer)["normalizers"].empty();
    if (!empty_sequence) {
      return Unsupported(name, "normalizer", "only null or an empty Sequence");
    }
  }
  absl::StatusOr<PreTokenizerKind> pre = ReadPreTokenizer(root, name);
  if (!pre.ok()) return pre.status();
  vocab.pre = *pre;

  auto model_it = root.find("model");
  if (model_it == root.end() || !model_it->is_object()) return Invalid(name, "model", "missing");
  const Json& model = *model_it;
  if (model.value("type", "BPE") != "BPE") {
    return Unsupported(name, "model.type", absl::StrCat("\"", model.value("type", ""), "\""));
  }
  if (!IsNullOrFalse(model, "byte_fallback")) {
    return Unsupported(name, "model.byte_fallback", "true");
  }
  if (!IsNullOrEmptyString(model, "continuing_subword_prefix") ||
      !IsNullOrEmptyString(model, "end_of_word_suffix")) {
    return Unsupported(name, "model", "continuing_subword_prefix / end_of_word_suffix");
  }
  vocab.ignore_merges = !IsNullOrFalse(model, "ignore_merges");

  // Tokens by id: model.vocab, then added_tokens (which may repeat an id).
  auto vocab_it = model.find("vocab");
  if (vocab_it == model.end() || !vocab_it->is_object()) {
    return Invalid(name, "model.vocab", "missing or not an object");
  }
  std::vector<std::pair<int64_t, std::string>> entries;
  entries.reserve(vocab_it->size());
  int64_t max_id = -1;
  for (auto it = vocab_it->begin(); it != vocab_it->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > 0x7FFFFFFE) {
      return Invalid(name, absl::StrCat("model.vocab[\"", it.key(), "\"]"),
                     "not a non-negative integer id");
    }
    entries.emplace_back(it.value().get<int64_t>(), it.key());
    max_id = std::max(max_id, entries.back().first);
  }
  struct Added {
    int64_t id;
    std::string content;
    bool special;
  };
  std::vector<Added> added;
  auto added_it = root.find("added_tokens");
  if (added_it != root.end() && !added_it->is_null()) {
    if (!added_it->is_array()) return Invalid(name, "added_tokens", "not an array");
    for (size_t i = 0; i < added_it->size(); ++i) {
      const Json& a = (*added_it)[i];
      const std::string field = absl::StrCat("added_tokens[", i, "]");
      if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() ||
          !a.contains("content") || !a["content"].is_string()) {
        return Invalid(name, field, "needs an integer id and a string content");
      }
      const int64_t id = a["id"].get<int64_t>();
      if (id < 0 || id > 0x7FFFFFFE) return Invalid(name, field + ".id", "out of range");
      if (!IsNullOrFalse(a, "lstrip") || !IsNullOrFalse(a, "rstrip")) {
        return Unsupported(name, field, "lstrip / rstrip");
      }
      added.push_back({id, a["content"].get<std::string>(), !IsNullOrFalse(a, "special")});
      max_id = std::max(max_id, id);
    }
  }
  vocab.tokens.assign(max_id + 1, "");
  vocab.token_types.assign(max_id + 1, BpeTokenType::kUnused);
  for (auto& [id, text] : entries) {
    if (vocab.token_types[id] != BpeTokenType::kUnused) {
      return Invalid(name, "model.vocab", absl::StrCat("id ", id, " appears twice"));
    }
    vocab.tokens[id] = std::move(text);
    vocab.token_types[id] = BpeTokenType::kNormal;
  }
  for (Added& a : added) {
    vocab.tokens[a.id] = std::move(a.content);
    vocab.token_types[a.id] = a.special ? BpeTokenType::kControl : BpeTokenType::kUserDefined;
  }

  auto merges_it = model.find("merges");
  if (merges_it == model.end() || !merges_it->is_array()) {
    return Invalid(name, "model.merges", "missing or not an array");
  }
  vocab.merges.reserve(merges_it->size());
  for (size_t i = 0; i < merges_it->size(); ++i) {
    const Json& m = (*merges_it)[i];
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        return Invalid(name, absl::StrCat("model.merges[", i, "]"), "not \"left right\"");
      }
      vocab.merges.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      vocab.merges.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
    } else {
      return Invalid(name, absl::StrCat("model.merges[", i, "]"),
                     "neither \"left right\" nor [left, right]");
    }
  }

  // BOS / EOS.
  std::string bos_text =
      "<\xef\xbd\x9c"
      "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
  std::string eos_text =
      "<\xef\xbd\x9c"
      "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
  if (!config_text.empty()) {
    const Json config = Json::parse(config_text.begin(), config_text.end(), nullptr, false);
    if (config.is_discarded() || !config.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": tokenizer_config.json is not a JSON object"));
    }
    bos_text = ConfigTokenContent(config, "bos_token");
    eos_text = ConfigTokenContent(config, "eos_token");
    auto add_bos = config.find("add_bos_token");
    vocab.add_bos = add_bos != config.end() && add_bos->is_boolean() && add_bos->get<bool>();
  }
  for (int64_t id = 0; id <= max_id; ++id) {
    if (vocab.token_types[id] == BpeTokenType::kUnused) continue;
    if (!bos_text.empty() && vocab.tokens[id] == bos_text && vocab.bos_id < 0) vocab.bos_id = id;
    if (!eos_text.empty() && vocab.tokens[id] == eos_text && vocab.eos_id < 0) vocab.eos_id = id;
  }
  return Create(std::move(vocab));
}

}  // namespace moeflow
