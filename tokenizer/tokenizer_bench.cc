// Tokenizer throughput: encodes and decodes a generated mixed corpus (English
// prose, code, Chinese, Japanese/Korean/Cyrillic/Arabic, emoji, digits,
// whitespace) and prints MB/s as a table, or JSON with --json.
//
// Usage:
//   tokenizer_bench --tokenizer_json=PATH/tokenizer.json [--mb=4] [--passes=3] [--json]
//   tokenizer_bench --gguf=PATH/model.gguf ...
// "cold" is the first pass over the corpus (empty piece cache), "warm" the
// best of the following passes; one thread.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "model/gguf.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow {
namespace {

struct Options {
  std::string tokenizer_json;
  std::string gguf;
  double mb = 4;
  int passes = 3;
  bool json = false;
};

bool ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const char* name, std::string* out) {
      const std::string prefix = std::string("--") + name + "=";
      if (a.compare(0, prefix.size(), prefix) != 0) return false;
      *out = a.substr(prefix.size());
      return true;
    };
    std::string v;
    if (value("tokenizer_json", &o->tokenizer_json) || value("gguf", &o->gguf)) continue;
    if (value("mb", &v)) {
      o->mb = std::atof(v.c_str());
    } else if (value("passes", &v)) {
      o->passes = std::max(2, std::atoi(v.c_str()));
    } else if (a == "--json") {
      o->json = true;
    } else {
      std::fprintf(stderr, "unknown flag %s\n", a.c_str());
      return false;
    }
  }
  if (o->tokenizer_json.empty() == o->gguf.empty()) {
    std::fprintf(stderr,
                 "usage: %s (--tokenizer_json=PATH | --gguf=PATH) [--mb=4] [--passes=3] "
                 "[--json]\n",
                 argv[0]);
    return false;
  }
  return true;
}

// A deterministic corpus of about `bytes` bytes, made of documents of one
// kind each. Words follow a Zipf-like distribution over a generated lexicon,
// so the piece cache sees a realistic mix of repeats and rare words.
std::string MakeCorpus(size_t bytes) {
  std::mt19937 rng(7);
  auto uniform = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  auto zipf = [&](int n) {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    return static_cast<int>(n * u * u * u);
  };
  const char* syllables[] = {"ka", "to",  "re",  "in",  "the", "an",  "er", "on", "st", "ion",
                             "al", "ing", "pro", "com", "de",  "ver", "ex", "un", "ly", "ment"};
  std::vector<std::string> lexicon;
  for (int i = 0; i < 5000; ++i) {
    std::string w;
    for (int s = uniform(1, 4); s > 0; --s) w += syllables[uniform(0, 19)];
    lexicon.push_back(w);
  }
  const std::vector<std::string> code = {"for (int i = 0; i < n; ++i) {\n",
                                         "  if (x[i] > max) max = x[i];\n",
                                         "}\n",
                                         "def forward(self, x):\n",
                                         "    return self.proj(x) * 0.5\n",
                                         "const y = await fetch(url, {method: 'POST'});\n",
                                         "#include <vector>\n",
                                         "    // TODO: handle the empty case\n",
                                         "return absl::OkStatus();\n",
                                         "\tpass\n"};
  const std::vector<std::string> cjk = {
      "\xe6\xb7\xb1\xe5\xba\xa6\xe5\xad\xa6\xe4\xb9\xa0",  // 深度学习
      "\xe6\xa8\xa1\xe5\x9e\x8b",                          // 模型
      "\xe7\x9a\x84",
      "\xe6\x98\xaf",
      "\xe5\x9c\xa8",  // 的 是 在
      "\xef\xbc\x8c",
      "\xe3\x80\x82",                                                  // ， 。
      "\xe3\x81\x93\xe3\x82\x93\xe3\x81\xab\xe3\x81\xa1\xe3\x81\xaf",  // こんにちは
      "\xec\x95\x88\xeb\x85\x95\xed\x95\x98\xec\x84\xb8\xec\x9a\x94",  // 안녕하세요
      "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82",              // Привет
      "\xd9\x85\xd8\xb1\xd8\xad\xd8\xa8\xd8\xa7",                      // مرحبا
      "\xf0\x9f\x98\x80",
      "\xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9"};
  std::string out;
  out.reserve(bytes + 1024);
  while (out.size() < bytes) {
    const int kind = uniform(0, 9);
    for (int n = uniform(20, 200); n > 0; --n) {
      if (kind < 5) {  // prose
        out += lexicon[zipf(5000)];
        const int r = uniform(0, 19);
        out += r == 0 ? ". " : r == 1 ? ", " : r == 2 ? "\n\n" : " ";
      } else if (kind < 8) {  // code
        out += code[uniform(0, static_cast<int>(code.size()) - 1)];
      } else if (kind == 8) {  // CJK and other scripts
        out += cjk[zipf(static_cast<int>(cjk.size()))];
      } else {  // numbers and whitespace
        out += std::to_string(uniform(0, 1 << 30));
        out += uniform(0, 3) == 0 ? "\t" : uniform(0, 1) ? "  " : ", ";
      }
    }
  }
  return out;
}

double Seconds(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int Main(int argc, char** argv) {
  Options o;
  if (!ParseFlags(argc, argv, &o)) return 2;
  const auto load_start = std::chrono::steady_clock::now();
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tok_or;
  std::unique_ptr<GgufFile> file;
  if (!o.gguf.empty()) {
    auto f = GgufFile::Open(o.gguf);
    if (!f.ok()) {
      std::fprintf(stderr, "%s\n", std::string(f.status().ToString()).c_str());
      return 1;
    }
    file = std::move(*f);
    tok_or = BpeTokenizer::FromGguf(*file);
  } else {
    tok_or = BpeTokenizer::FromHfJsonFile(o.tokenizer_json);
  }
  if (!tok_or.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok_or.status().ToString()).c_str());
    return 1;
  }
  const double load_s = Seconds(load_start);
  const BpeTokenizer& tok = **tok_or;
  const std::string corpus = MakeCorpus(static_cast<size_t>(o.mb * 1e6));
  // Encode in documents of ~4 KB, as a server sees prompts.
  std::vector<std::pair<size_t, size_t>> docs;
  for (size_t at = 0; at < corpus.size();) {
    size_t end = std::min(corpus.size(), at + 4096);
    while (end < corpus.size() && (static_cast<unsigned char>(corpus[end]) & 0xC0) == 0x80) ++end;
    docs.emplace_back(at, end - at);
    at = end;
  }
  double cold_s = 0, warm_s = 1e30;
  size_t tokens = 0;
  std::vector<std::vector<int32_t>> encoded(docs.size());
  for (int pass = 0; pass < o.passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    tokens = 0;
    for (size_t d = 0; d < docs.size(); ++d) {
      encoded[d] =
          tok.Encode(absl::string_view(corpus).substr(docs[d].first, docs[d].second), false);
      tokens += encoded[d].size();
    }
    const double s = Seconds(start);
    if (pass == 0) {
      cold_s = s;
    } else {
      warm_s = std::min(warm_s, s);
    }
  }
  double decode_s = 1e30;
  size_t decoded_bytes = 0;
  for (int pass = 0; pass < o.passes; ++pass) {
    const auto start = std::chrono::steady_clock::now();
    decoded_bytes = 0;
    for (const auto& ids : encoded) decoded_bytes += tok.Decode(ids).size();
    decode_s = std::min(decode_s, Seconds(start));
  }
  const double mb = corpus.size() / 1e6;
  const std::string source = o.gguf.empty() ? o.tokenizer_json : o.gguf;
  if (o.json) {
    std::printf(
        "{\"tokenizer\": \"%s\", \"vocab_size\": %lld, \"pre\": \"%s\", \"corpus_bytes\": %zu, "
        "\"tokens\": %zu, \"bytes_per_token\": %.3f, \"load_s\": %.3f, "
        "\"encode_cold_mb_per_s\": %.2f, \"encode_warm_mb_per_s\": %.2f, "
        "\"decode_mb_per_s\": %.1f, \"round_trip\": %s}\n",
        source.c_str(), static_cast<long long>(tok.vocab_size()),
        std::string(PreTokenizerKindName(tok.pre_tokenizer())).c_str(), corpus.size(), tokens,
        static_cast<double>(corpus.size()) / tokens, load_s, mb / cold_s, mb / warm_s,
        decoded_bytes / 1e6 / decode_s, decoded_bytes == corpus.size() ? "true" : "false");
    return 0;
  }
  std::printf("tokenizer  %s (vocab %lld, pre %s, loaded in %.2f s)\n", source.c_str(),
              static_cast<long long>(tok.vocab_size()),
              std::string(PreTokenizerKindName(tok.pre_tokenizer())).c_str(), load_s);
  std::printf("corpus     %.2f MB mixed text, %zu documents, %zu tokens (%.2f bytes/token)\n\n", mb,
              docs.size(), tokens, static_cast<double>(corpus.size()) / tokens);
  std::printf("%-22s %10s %12s\n", "phase", "MB/s", "Mtokens/s");
  std::printf("%-22s %10.2f %12.3f\n", "encode (cold cache)", mb / cold_s, tokens / 1e6 / cold_s);
  std::printf("%-22s %10.2f %12.3f\n", "encode (warm cache)", mb / warm_s, tokens / 1e6 / warm_s);
  std::printf("%-22s %10.1f %12.3f\n", "decode", decoded_bytes / 1e6 / decode_s,
              tokens / 1e6 / decode_s);
  if (decoded_bytes != corpus.size()) std::printf("WARNING: decode size differs from the input\n");
  return 0;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) { return moeflow::Main(argc, argv); }
