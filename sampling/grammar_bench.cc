// What constrained decoding costs per token on a real vocabulary (the
// DeepSeek-V3 tokenizer's, 128k tokens), and a check of the mask on it.
//
//   grammar_bench --tokenizer_json=tokenizer.json [--tokens=400 --reps=20 --json --check]
//
// Rows:
//   vocabulary     building the byte trie (once per served model)
//   mask STATE     one Mask(): the first in a fresh sequence (every token's
//                  bytes walked through the grammar's byte automaton, cold,
//                  rejected prefixes skipped) and the median of --reps more
//                  (the state's mask then comes from the cache; the walk
//                  alone, automaton warm, is the "walk" row below), for the
//                  grammar of JSON mode
//                  and of a schema, at: the start, after '{' (a key must
//                  come), inside a string value, inside a number
//   allows         one Allows() (the fast path's check of the sampled token)
//   sample         a whole generation of --tokens tokens from random logits
//                  (N(0, 3) per token, fresh each step; greedy and
//                  temperature 1): Sampler::Sample time per token without a
//                  grammar and with it, how many steps built the mask, the
//                  grammar's cost per token (the difference)
// With --check, every state above is also checked token by token (Mask
// against Allows for all ids); the program exits 1 on a difference.
// Prints a table, or JSON with --json.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "sampling/grammar.h"
#include "sampling/grammar_constraint.h"
#include "sampling/json_schema_grammar.h"
#include "sampling/sampler.h"
#include "sampling/tokenizer_vocabulary.h"
#include "tokenizer/bpe_tokenizer.h"

ABSL_FLAG(std::string, tokenizer_json, "", "a Hugging Face tokenizer.json (DeepSeek-V3's)");
ABSL_FLAG(int32_t, tokens, 400, "tokens per generation in the sample rows");
ABSL_FLAG(int32_t, reps, 20, "warm masks timed per state (median)");
ABSL_FLAG(bool, json, false, "print JSON instead of a table");
ABSL_FLAG(bool, check, false, "check each state's mask token by token; exit 1 on a difference");

namespace moeflow::sampling {
namespace {

double NowUs() {
  return std::chrono::duration<double, std::micro>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr char kSchema[] = R"({"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}},
    "address": {"type": "object", "properties": {"city": {"type": "string"},
                "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}, "required": ["city"]}},
    "required": ["name", "age"]})";

struct Row {
  std::string what;
  double us = 0;        // the row's time (µs)
  double cold_us = 0;   // masks: the first one
  int64_t count = 0;    // masks: tokens allowed; sample: masks built
  int64_t tokens = 0;   // sample: tokens generated
  double plain_us = 0;  // sample: per token without a grammar
  int64_t walks = 0;    // sample: masks that walked the trie (not cached)
};

std::shared_ptr<const TokenGrammar> MakeGrammar(const std::string& schema,
                                                std::shared_ptr<const TokenVocabulary> vocab) {
  absl::StatusOr<std::string> gbnf = JsonSchemaToGbnf(nlohmann::ordered_json::parse(schema));
  if (!gbnf.ok()) {
    std::fprintf(stderr, "%s\n", std::string(gbnf.status().message()).c_str());
    std::exit(1);
  }
  absl::StatusOr<Grammar> g = Grammar::Parse(*gbnf);
  if (!g.ok()) {
    std::fprintf(stderr, "%s\n", std::string(g.status().message()).c_str());
    std::exit(1);
  }
  auto tg = std::make_shared<TokenGrammar>();
  tg->grammar = std::make_shared<const Grammar>(*std::move(g));
  tg->vocabulary = std::move(vocab);
  return tg;
}

// Feeds `text` as the tokenizer's tokens of it (the way a model would
// produce it, roughly).
bool Feed(GrammarConstraint& c, const BpeTokenizer& tokenizer, const std::string& text) {
  for (int32_t t : tokenizer.Encode(text, /*add_bos=*/false)) {
    if (!c.Accept(t).ok()) return false;
  }
  return true;
}

bool CheckMask(GrammarConstraint& c, int64_t vocab, const std::string& what) {
  std::vector<float> logits(static_cast<size_t>(vocab), 0.0f);
  c.Mask(absl::MakeSpan(logits));
  int64_t bad = 0;
  for (int32_t t = 0; t < vocab; ++t) {
    if (std::isfinite(logits[t]) != c.Allows(t)) {
      if (bad++ < 5) std::fprintf(stderr, "check %s: token %d differs\n", what.c_str(), t);
    }
  }
  if (bad > 0) std::fprintf(stderr, "check %s: %lld tokens differ\n", what.c_str(), (long long)bad);
  return bad == 0;
}

int Main() {
  const std::string path = absl::GetFlag(FLAGS_tokenizer_json);
  if (path.empty()) {
    std::fprintf(stderr, "grammar_bench: --tokenizer_json is required\n");
    return 2;
  }
  absl::StatusOr<std::unique_ptr<BpeTokenizer>> tokenizer = BpeTokenizer::FromHfJsonFile(path);
  if (!tokenizer.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tokenizer.status().message()).c_str());
    return 1;
  }
  const BpeTokenizer& tok = **tokenizer;
  const int64_t vocab_size = tok.vocab_size();
  std::vector<Row> rows;
  double t0 = NowUs();
  std::shared_ptr<const TokenVocabulary> vocab = VocabularyOf(tok);
  rows.push_back(
      {"vocabulary (trie build)", NowUs() - t0, 0, static_cast<int64_t>(vocab->trie().size())});
  const int reps = std::max(1, absl::GetFlag(FLAGS_reps));
  bool ok = true;

  struct State {
    const char* name;
    std::string prefix;
  };
  const std::vector<State> states = {{"start", ""},
                                     {"after '{'", "{"},
                                     {"in a string", "{\"name\": \"Ada Lov"},
                                     {"in a number", "{\"name\": \"Ada\", \"age\": 1"}};
  for (const auto& [grammar_name, schema] : std::vector<std::pair<std::string, std::string>>{
           {"json_object", R"({"type": "object"})"}, {"schema", kSchema}}) {
    auto tg = MakeGrammar(schema, vocab);
    for (const State& s : states) {
      GrammarConstraint c(tg);
      if (!Feed(c, tok, s.prefix)) {
        std::fprintf(stderr, "%s: the grammar rejects \"%s\"\n", grammar_name.c_str(),
                     s.prefix.c_str());
        return 1;
      }
      std::vector<float> logits(static_cast<size_t>(vocab_size), 0.0f);
      double start = NowUs();
      const int64_t allowed = c.Mask(absl::MakeSpan(logits));
      const double cold = NowUs() - start;
      std::vector<double> times;
      for (int r = 0; r < reps; ++r) {
        start = NowUs();
        c.Mask(absl::MakeSpan(logits));
        times.push_back(NowUs() - start);
      }
      std::sort(times.begin(), times.end());
      rows.push_back({absl::StrFormat("mask %s, %s", grammar_name, s.name), times[times.size() / 2],
                      cold, allowed});
      times.clear();
      for (int r = 0; r < reps; ++r) {
        c.ForgetMasks();
        start = NowUs();
        c.Mask(absl::MakeSpan(logits));
        times.push_back(NowUs() - start);
      }
      std::sort(times.begin(), times.end());
      rows.push_back({absl::StrFormat("  walk (not cached)"), times[times.size() / 2], 0, allowed});
      if (absl::GetFlag(FLAGS_check)) ok &= CheckMask(c, vocab_size, grammar_name + " " + s.name);
    }
    // The fast path's check of one token.
    {
      GrammarConstraint c(tg);
      Feed(c, tok, "{\"name\": \"Ada Lov");
      const int32_t probe = tok.Encode("elace", false)[0];
      const int n = 100000;
      double start = NowUs();
      int64_t yes = 0;
      for (int i = 0; i < n; ++i) yes += c.Allows(probe);
      rows.push_back({absl::StrFormat("allows %s, in a string", grammar_name),
                      (NowUs() - start) / n, 0, yes > 0 ? 1 : 0});
    }
    for (float temperature : {0.0f, 1.0f}) {
      const int32_t n_tokens = absl::GetFlag(FLAGS_tokens);
      // The same logits for both runs.
      std::mt19937_64 rng(42);
      std::normal_distribution<float> noise(0.0f, 3.0f);
      std::vector<std::vector<float>> all(static_cast<size_t>(n_tokens));
      for (auto& l : all) {
        l.resize(static_cast<size_t>(vocab_size));
        for (float& x : l) x = noise(rng);
      }
      auto run = [&](bool with_grammar, int64_t* masks, int64_t* walks, int64_t* generated) {
        SamplerOptions options;
        options.temperature = temperature;
        options.seed = 1;
        if (with_grammar) options.grammar = tg;
        absl::StatusOr<Sampler> sampler = Sampler::Create(options);
        double total = 0;
        *masks = 0;
        *walks = 0;
        *generated = 0;
        for (int32_t i = 0; i < n_tokens; ++i) {
          const double start = NowUs();
          absl::StatusOr<int32_t> t = sampler->Sample(all[i]);
          total += NowUs() - start;
          if (!t.ok()) {
            std::fprintf(stderr, "sample: %s\n", std::string(t.status().message()).c_str());
            std::exit(1);
          }
          ++*generated;
          if (with_grammar && sampler->grammar()->ended()) {  // a document ended: start another
            *masks += sampler->grammar()->masks();
            *walks += sampler->grammar()->walks();
            sampler = Sampler::Create(options);
          }
        }
        if (with_grammar) {
          *masks += sampler->grammar()->masks();
          *walks += sampler->grammar()->walks();
        }
        return total / n_tokens;
      };
      int64_t masks = 0, walks = 0, generated = 0;
      const double plain = run(false, &masks, &walks, &generated);
      const double constrained = run(true, &masks, &walks, &generated);
      rows.push_back({absl::StrFormat("sample %s, %s", grammar_name,
                                      temperature == 0 ? "greedy" : "temperature 1"),
                      constrained, 0, masks, generated, plain, walks});
    }
  }
  if (absl::GetFlag(FLAGS_json)) {
    nlohmann::json out = {
        {"tokenizer", path}, {"vocab", vocab_size}, {"rows", nlohmann::json::array()}};
    for (const Row& r : rows) {
      out["rows"].push_back({{"what", r.what},
                             {"us", r.us},
                             {"cold_us", r.cold_us},
                             {"count", r.count},
                             {"tokens", r.tokens},
                             {"plain_us", r.plain_us},
                             {"walks", r.walks}});
    }
    std::printf("%s\n", out.dump(1).c_str());
  } else {
    std::printf("vocabulary: %lld tokens, %lld in the trie (%lld nodes)\n",
                static_cast<long long>(vocab_size),
                static_cast<long long>(vocab->trie_tokens().size()),
                static_cast<long long>(vocab->trie().size()));
    std::printf("%-40s %12s %12s %10s %s\n", "what", "µs", "cold µs", "count", "");
    for (const Row& r : rows) {
      if (r.tokens > 0) {
        std::printf(
            "%-40s %12.2f %12s %10lld  (µs per token; %lld tokens, %lld masks built, %lld trie "
            "walks; without a grammar %.2f µs, the grammar %+.2f µs)\n",
            r.what.c_str(), r.us, "", static_cast<long long>(r.count),
            static_cast<long long>(r.tokens), static_cast<long long>(r.count),
            static_cast<long long>(r.walks), r.plain_us, r.us - r.plain_us);
      } else {
        std::printf("%-40s %12.2f %12.1f %10lld\n", r.what.c_str(), r.us, r.cold_us,
                    static_cast<long long>(r.count));
      }
    }
  }
  if (!ok) {
    std::fprintf(stderr, "FAIL: a mask differs from the token-by-token check\n");
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace moeflow::sampling

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return moeflow::sampling::Main();
}
