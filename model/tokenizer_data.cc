#include "model/tokenizer_data.h"

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/check.h"
#include "nlohmann/json.hpp"

namespace moeflow {
namespace {

// DeepSeek's sentence markers (fullwidth bars, U+2581 for the space).
constexpr char kBosText[] =
    "<\xEF\xBD\x9C"
    "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
constexpr char kEosText[] =
    "<\xEF\xBD\x9C"
    "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";

std::string Utf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Training text for the generated vocabulary: plain English about the
// project's own subject plus a little code, so that merges look like a real
// tokenizer's (common words, spaces before words, indentation).
constexpr char kTrainingText[] = R"(
The model reads a sequence of tokens and predicts the next one. Each layer of
the network first normalizes the hidden state, then computes attention over the
previous positions, and then passes the result through a feed forward block.
In a mixture of experts model the feed forward block is replaced by many small
experts, and a router chooses a few of them for every token. The router scores
each expert, keeps the best ones, and the outputs of the chosen experts are
added together with their weights. Shared experts are always used. Because only
a few experts run for each token, the model can hold a very large number of
parameters while the cost of computing one token stays small.
The attention in these models compresses the keys and values into a latent
vector of low rank, which makes the cache much smaller than in ordinary
attention. Rotary position embeddings are applied to a separate part of every
query and key. The weights are stored in quantized formats that use four, five,
six or eight bits for each value, with a scale for every block of values.
When the experts live in the memory of the processor and attention runs on the
graphics card, the two devices exchange the hidden states of the tokens for
every layer. Memory bandwidth decides how fast the experts can be read, so each
socket keeps its own copy or its own share of the experts, and the threads that
compute them are pinned to the cores of that socket.
A request arrives with a prompt. The server splits the prompt into tokens,
runs them through the model in one batch, and then generates new tokens one at
a time until it reaches the end of the sentence or the limit on the length.
Many requests are served at the same time: their tokens are put together in a
batch, and the scheduler decides which requests may start and which must wait.
The numbers in this file are random, so the text that the model writes has no
meaning, but the shapes, the names and the formats of the tensors are the same
as in the real model, and every program that loads the real model loads this
one too. Tests compare the results of two programs on the same file.
Questions and answers: what is the time? It is ten past nine in the morning.
Where is the station? Turn left at the second street and walk for five minutes.
How many people live in the city? About two million, and more every year.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 32 64 128 256 512 1024 2048 4096 8192.
int main(int argc, char** argv) {
  for (int i = 0; i < argc; ++i) {
    printf("%d: %s\n", i, argv[i]);
  }
  return 0;
}
def forward(self, hidden_states, attention_mask=None):
    residual = hidden_states
    hidden_states = self.input_layernorm(hidden_states)
    hidden_states = self.self_attn(hidden_states, attention_mask)
    hidden_states = residual + hidden_states
    return hidden_states
for (const auto& tensor : file.tensors()) {
  if (tensor.name.find("experts") != std::string::npos) {
    total_bytes += tensor.n_bytes;
  }
}
)";

// Splits text into pre-tokens the way byte-level BPE pre-tokenizers roughly
// do: an optional space followed by a run of letters, digits or punctuation;
// other whitespace runs on their own.
std::vector<std::string> PreTokenize(const std::string& text) {
  auto kind = [](unsigned char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) return 0;
    if (c >= '0' && c <= '9') return 1;
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r') return 2;
    return 3;
  };
  std::vector<std::string> words;
  size_t i = 0;
  while (i < text.size()) {
    size_t start = i;
    if (text[i] == ' ' && i + 1 < text.size() && kind(text[i + 1]) != 2) ++i;
    const int k = kind(text[i]);
    ++i;
    while (i < text.size() && kind(text[i]) == k) ++i;
    words.push_back(text.substr(start, i - start));
  }
  return words;
}

}  // namespace

const std::vector<std::string>& ByteLevelAlphabet() {
  static const std::vector<std::string>* alphabet = [] {
    auto* table = new std::vector<std::string>(256);
    uint32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
      (*table)[b] = Utf8(printable ? static_cast<uint32_t>(b) : next++);
    }
    return table;
  }();
  return *alphabet;
}

void TokenizerData::AddToGguf(GgufWriter& writer) const {
  MOEFLOW_CHECK(tokens.size() == token_types.size());
  writer.AddMetadata("tokenizer.ggml.model", GgufValue::String(model));
  writer.AddMetadata("tokenizer.ggml.pre", GgufValue::String(pre));
  std::vector<GgufValue> token_values;
  token_values.reserve(tokens.size());
  for (const std::string& t : tokens) token_values.push_back(GgufValue::String(t));
  writer.AddMetadata("tokenizer.ggml.tokens",
                     GgufValue::Array(GgufType::kString, std::move(token_values)));
  std::vector<GgufValue> type_values;
  type_values.reserve(token_types.size());
  for (TokenType t : token_types) {
    type_values.push_back(GgufValue::Int(GgufType::kInt32, static_cast<int32_t>(t)));
  }
  writer.AddMetadata("tokenizer.ggml.token_type",
                     GgufValue::Array(GgufType::kInt32, std::move(type_values)));
  std::vector<GgufValue> merge_values;
  merge_values.reserve(merges.size());
  for (const std::string& m : merges) merge_values.push_back(GgufValue::String(m));
  writer.AddMetadata("tokenizer.ggml.merges",
                     GgufValue::Array(GgufType::kString, std::move(merge_values)));
  if (bos_id >= 0) {
    writer.AddMetadata("tokenizer.ggml.bos_token_id", GgufValue::Uint(GgufType::kUint32, bos_id));
  }
  if (eos_id >= 0) {
    writer.AddMetadata("tokenizer.ggml.eos_token_id", GgufValue::Uint(GgufType::kUint32, eos_id));
  }
  if (padding_id >= 0) {
    writer.AddMetadata("tokenizer.ggml.padding_token_id",
                       GgufValue::Uint(GgufType::kUint32, padding_id));
  }
  writer.AddMetadata("tokenizer.ggml.add_bos_token", GgufValue::Uint(GgufType::kBool, add_bos));
  writer.AddMetadata("tokenizer.ggml.add_eos_token", GgufValue::Uint(GgufType::kBool, add_eos));
  if (!chat_template.empty()) {
    writer.AddMetadata("tokenizer.chat_template", GgufValue::String(chat_template));
  }
}

TokenizerData GenerateByteLevelBpe(int64_t vocab_size) {
  MOEFLOW_CHECK(vocab_size >= 258);
  const std::vector<std::string>& alphabet = ByteLevelAlphabet();
  TokenizerData data;
  data.pre = "deepseek-llm";
  data.tokens = alphabet;
  const int64_t n_merges = vocab_size - 256 - 2;
  absl::flat_hash_set<std::string> known(alphabet.begin(), alphabet.end());

  // Word frequencies, each word as a sequence of symbols.
  std::map<std::string, int64_t> counts;
  for (const std::string& w : PreTokenize(kTrainingText)) ++counts[w];
  std::vector<std::pair<std::vector<std::string>, int64_t>> words;
  for (const auto& [w, n] : counts) {
    std::vector<std::string> symbols;
    for (unsigned char c : w) symbols.push_back(alphabet[c]);
    words.emplace_back(std::move(symbols), n);
  }

  // Learned merges: most frequent adjacent pair (ties: smallest pair text),
  // while some pair occurs at least twice.
  while (static_cast<int64_t>(data.merges.size()) < n_merges) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [symbols, n] : words) {
      for (size_t i = 0; i + 1 < symbols.size(); ++i) pairs[{symbols[i], symbols[i + 1]}] += n;
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_count = 1;
    for (const auto& [pair, n] : pairs) {
      if (n > best_count) {
        best = &pair;
        best_count = n;
      }
    }
    if (best == nullptr) break;
    const std::string left = best->first, right = best->second;
    const std::string joined = left + right;
    for (auto& [symbols, n] : words) {
      std::vector<std::string> out;
      for (size_t i = 0; i < symbols.size(); ++i) {
        if (i + 1 < symbols.size() && symbols[i] == left && symbols[i + 1] == right) {
          out.push_back(joined);
          ++i;
        } else {
          out.push_back(symbols[i]);
        }
      }
      symbols = std::move(out);
    }
    data.merges.push_back(left + " " + right);
    if (known.insert(joined).second) data.tokens.push_back(joined);
  }

  // Filler merges: two existing tokens joined, chosen by a fixed PRNG, kept
  // short so that they stay plausible pieces of text.
  uint64_t state = 0x6D6F65666C6F77ull;  // "moeflow"
  while (static_cast<int64_t>(data.tokens.size()) < vocab_size - 2) {
    const std::string& left = data.tokens[SplitMix64(state) % data.tokens.size()];
    const std::string& right = data.tokens[SplitMix64(state) % data.tokens.size()];
    std::string joined = left + right;
    if (joined.size() > 16 || known.contains(joined)) continue;
    data.merges.push_back(left + " " + right);
    known.insert(joined);
    data.tokens.push_back(std::move(joined));
  }
  data.token_types.assign(data.tokens.size(), TokenType::kNormal);
  data.bos_id = vocab_size - 2;
  data.eos_id = vocab_size - 1;
  data.padding_id = data.eos_id;
  data.tokens.push_back(kBosText);
  data.tokens.push_back(kEosText);
  data.token_types.push_back(TokenType::kControl);
  data.token_types.push_back(TokenType::kControl);
  return data;
}

namespace {

absl::StatusOr<nlohmann::json> ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::stringstream buffer;
  buffer << in.rdbuf();
  nlohmann::json json = nlohmann::json::parse(buffer.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded())
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  return json;
}

// tokenizer_config.json spells a special token as "text" or {"content": "text"}.
std::string TokenText(const nlohmann::json& value) {
  if (value.is_string()) return value.get<std::string>();
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    return value["content"].get<std::string>();
  }
  return "";
}

}  // namespace

absl::StatusOr<TokenizerData> LoadHfTokenizerJson(const std::string& path, int64_t min_vocab_size) {
  MOEFLOW_ASSIGN_OR_RETURN(nlohmann::json json, ReadJson(path));
  if (!json.is_object() || !json.contains("model") || !json["model"].is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": no \"model\" object"));
  }
  const nlohmann::json& model = json["model"];
  if (model.contains("type") && model["type"].is_string() && model["type"] != "BPE") {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": model.type is ", model["type"].get<std::string>(), ", only BPE is supported"));
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": model.vocab is missing or not an object"));
  }
  // id → (text, type); later entries (added tokens) override.
  std::map<int64_t, std::pair<std::string, TokenType>> by_id;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": model.vocab[\"", it.key(), "\"] is not a token id"));
    }
    by_id[it.value().get<int64_t>()] = {it.key(), TokenType::kNormal};
  }
  absl::flat_hash_map<std::string, int64_t> added_ids;
  if (json.contains("added_tokens")) {
    if (!json["added_tokens"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": added_tokens is not an array"));
    }
    int index = 0;
    for (const nlohmann::json& added : json["added_tokens"]) {
      if (!added.is_object() || !added.contains("id") || !added["id"].is_number_integer() ||
          !added.contains("content") || !added["content"].is_string()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": added_tokens[", index, "] lacks an integer id or a content"));
      }
      const bool special = added.value("special", false);
      const std::string content = added["content"].get<std::string>();
      const int64_t id = added["id"].get<int64_t>();
      if (id < 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": added_tokens[", index, "].id < 0"));
      }
      by_id[id] = {content, special ? TokenType::kControl : TokenType::kUserDefined};
      added_ids[content] = id;
      ++index;
    }
  }
  if (by_id.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": empty vocabulary"));
  const int64_t n = std::max(by_id.rbegin()->first + 1, min_vocab_size);

  TokenizerData data;
  data.pre = "deepseek-v3";
  data.tokens.resize(n);
  data.token_types.resize(n);
  for (int64_t id = 0; id < n; ++id) {
    auto it = by_id.find(id);
    if (it == by_id.end()) {
      data.tokens[id] = absl::StrCat("[PAD", id, "]");
      data.token_types[id] = TokenType::kUnused;
    } else {
      data.tokens[id] = it->second.first;
      data.token_types[id] = it->second.second;
    }
  }

  if (!model.contains("merges") || !model["merges"].is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": model.merges is missing or not an array"));
  }
  data.merges.reserve(model["merges"].size());
  int64_t index = 0;
  for (const nlohmann::json& merge : model["merges"]) {
    if (merge.is_string()) {
      data.merges.push_back(merge.get<std::string>());
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      data.merges.push_back(merge[0].get<std::string>() + " " + merge[1].get<std::string>());
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": model.merges[", index, "] is neither \"a b\" nor [\"a\", \"b\"]"));
    }
    ++index;
  }

  // BOS/EOS: tokenizer_config.json beside the file, else DeepSeek's names.
  std::string bos_text = kBosText, eos_text = kEosText;
  const size_t slash = path.find_last_of('/');
  const std::string config_path =
      (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
      "tokenizer_config.json";
  if (std::ifstream(config_path).good()) {
    MOEFLOW_ASSIGN_OR_RETURN(nlohmann::json config, ReadJson(config_path));
    if (config.is_object() && config.contains("bos_token")) {
      const std::string text = TokenText(config["bos_token"]);
      if (!text.empty()) bos_text = text;
    }
    if (config.is_object() && config.contains("eos_token")) {
      const std::string text = TokenText(config["eos_token"]);
      if (!text.empty()) eos_text = text;
    }
    if (config.is_object() && config.contains("add_bos_token") &&
        config["add_bos_token"].is_boolean()) {
      data.add_bos = config["add_bos_token"].get<bool>();
    }
    if (config.is_object() && config.contains("add_eos_token") &&
        config["add_eos_token"].is_boolean()) {
      data.add_eos = config["add_eos_token"].get<bool>();
    }
    if (config.is_object() && config.contains("chat_template")) {
      const nlohmann::json& tmpl = config["chat_template"];
      if (tmpl.is_string()) {
        data.chat_template = tmpl.get<std::string>();
      } else if (tmpl.is_array()) {
        // Newer configs: [{"name": "default", "template": "..."}, ...].
        for (const nlohmann::json& entry : tmpl) {
          if (entry.is_object() && entry.value("name", "") == "default" &&
              entry.contains("template") && entry["template"].is_string()) {
            data.chat_template = entry["template"].get<std::string>();
          }
        }
      }
    }
  }
  auto find_id = [&](const std::string& text) -> int64_t {
    if (auto it = added_ids.find(text); it != added_ids.end()) return it->second;
    if (model["vocab"].contains(text)) return model["vocab"][text].get<int64_t>();
    return -1;
  };
  data.bos_id = find_id(bos_text);
  data.eos_id = find_id(eos_text);
  if (data.bos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": BOS token \"", bos_text, "\" is not in the vocabulary"));
  }
  if (data.eos_id < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": EOS token \"", eos_text, "\" is not in the vocabulary"));
  }
  data.padding_id = data.eos_id;
  return data;
}

absl::StatusOr<TokenizerSummary> SummarizeTokenizer(const GgufFile& file) {
  TokenizerSummary summary;
  MOEFLOW_ASSIGN_OR_RETURN(summary.model, file.GetString("tokenizer.ggml.model"));
  if (file.Find("tokenizer.ggml.pre") != nullptr) {
    MOEFLOW_ASSIGN_OR_RETURN(summary.pre, file.GetString("tokenizer.ggml.pre"));
  }
  std::vector<std::string> tokens;
  if (file.Find("tokenizer.ggml.tokens") != nullptr) {
    MOEFLOW_ASSIGN_OR_RETURN(tokens, file.GetStringArray("tokenizer.ggml.tokens"));
  }
  summary.vocab_size = static_cast<int64_t>(tokens.size());
  if (const GgufValue* merges = file.Find("tokenizer.ggml.merges"); merges != nullptr) {
    if (merges->type() != GgufType::kArray) {
      return absl::InvalidArgumentError(
          absl::StrCat(file.path(), ": tokenizer.ggml.merges is not an array"));
    }
    summary.merges = static_cast<int64_t>(merges->as_array().size());
  }
  summary.type_counts.assign(7, 0);
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    MOEFLOW_ASSIGN_OR_RETURN(std::vector<int64_t> types,
                             file.GetIntArray("tokenizer.ggml.token_type"));
    for (int64_t t : types) {
      if (t >= 0 && t < 7) ++summary.type_counts[t];
    }
  }
  MOEFLOW_ASSIGN_OR_RETURN(summary.bos_id, file.GetIntOr("tokenizer.ggml.bos_token_id", -1));
  MOEFLOW_ASSIGN_OR_RETURN(summary.eos_id, file.GetIntOr("tokenizer.ggml.eos_token_id", -1));
  MOEFLOW_ASSIGN_OR_RETURN(summary.add_bos, file.GetBoolOr("tokenizer.ggml.add_bos_token", false));
  MOEFLOW_ASSIGN_OR_RETURN(summary.add_eos, file.GetBoolOr("tokenizer.ggml.add_eos_token", false));
  if (summary.bos_id >= 0 && summary.bos_id < summary.vocab_size)
    summary.bos_text = tokens[summary.bos_id];
  if (summary.eos_id >= 0 && summary.eos_id < summary.vocab_size)
    summary.eos_text = tokens[summary.eos_id];
  return summary;
}

}  // namespace moeflow
