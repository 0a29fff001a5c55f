#include "tokenizer/pre_tokenizer.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "tokenizer/unicode_tables.h"

namespace moeflow {
namespace {

// Code points above U+10FFFF stand for invalid UTF-8 bytes (one each).
constexpr uint32_t kInvalidByteBase = 0x110000;

// Decodes one code point at text[i]; returns its length in bytes (1 for an
// invalid byte, which yields kInvalidByteBase + byte). Accepts exactly the
// well-formed sequences of Unicode Table 3-7 (no overlongs, no surrogates).
inline int DecodeUtf8(const unsigned char* s, size_t n, size_t i, uint32_t* cp) {
  const unsigned char b0 = s[i];
  if (b0 < 0x80) {
    *cp = b0;
    return 1;
  }
  auto cont = [&](size_t k, unsigned char lo, unsigned char hi) {
    return i + k < n && s[i + k] >= lo && s[i + k] <= hi;
  };
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    if (cont(1, 0x80, 0xBF)) {
      *cp = ((b0 & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
      return 2;
    }
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    const unsigned char lo = b0 == 0xE0 ? 0xA0 : 0x80;
    const unsigned char hi = b0 == 0xED ? 0x9F : 0xBF;
    if (cont(1, lo, hi) && cont(2, 0x80, 0xBF)) {
      *cp = ((b0 & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
      return 3;
    }
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    const unsigned char lo = b0 == 0xF0 ? 0x90 : 0x80;
    const unsigned char hi = b0 == 0xF4 ? 0x8F : 0xBF;
    if (cont(1, lo, hi) && cont(2, 0x80, 0xBF) && cont(3, 0x80, 0xBF)) {
      *cp = ((b0 & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) |
            (s[i + 3] & 0x3Fu);
      return 4;
    }
  }
  *cp = kInvalidByteBase + b0;
  return 1;
}

// The decoded text: code points, their class flags and byte offsets
// (offsets[i] is where code point i starts; offsets[n] is the text size).
struct DecodedText {
  std::vector<uint32_t> cps;
  std::vector<uint8_t> flags;
  std::vector<uint32_t> offsets;
};

// Scanner state for one Split call.
class Scanner {
 public:
  Scanner(PreTokenizerKind kind, const DecodedText& text, absl::string_view bytes,
          std::vector<absl::string_view>* pieces)
      : kind_(kind), text_(text), bytes_(bytes), pieces_(pieces) {}

  void Run(int b, int e) { Stage(0, b, e); }

 private:
  uint32_t cp(int i) const { return text_.cps[i]; }
  bool Has(int i, uint8_t flag) const { return (text_.flags[i] & flag) != 0; }
  bool Ws(int i) const { return Has(i, kCpWhitespace); }
  bool CrLf(int i) const { return cp(i) == '\r' || cp(i) == '\n'; }

  int num_stages() const { return kind_ == PreTokenizerKind::kDeepseekV3 ? 3 : 6; }

  // Applies Split stage `stage` ("Isolated") to the piece [b, e) and feeds
  // every resulting piece to the next stage.
  void Stage(int stage, int b, int e) {
    if (stage == num_stages()) {
      pieces_->push_back(bytes_.substr(text_.offsets[b], text_.offsets[e] - text_.offsets[b]));
      return;
    }
    int gap = b;
    int p = b;
    while (p < e) {
      const int q = Match(stage, p, e);
      if (q > p) {
        if (gap < p) Stage(stage + 1, gap, p);
        Stage(stage + 1, p, q);
        p = q;
        gap = q;
      } else {
        ++p;
      }
    }
    if (gap < e) Stage(stage + 1, gap, e);
  }

  // End of the regex match of `stage` starting exactly at p within the piece
  // [.., e), or -1 when the regex does not match at p.
  int Match(int stage, int p, int e) const {
    return kind_ == PreTokenizerKind::kDeepseekV3 ? MatchV3(stage, p, e) : MatchLlm(stage, p, e);
  }

  template <typename Pred>
  int RunEnd(int p, int e, Pred pred) const {
    while (p < e && pred(p)) ++p;
    return p;
  }

  static bool IsAsciiLetter(uint32_t c) { return (c | 0x20) >= 'a' && (c | 0x20) <= 'z'; }
  static bool IsAsciiPunct(uint32_t c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) ||
           (c >= 0x7B && c <= 0x7E);
  }

  int MatchV3(int stage, int p, int e) const {
    switch (stage) {
      case 0: {  // \p{N}{1,3}
        if (!Has(p, kCpNumber)) return -1;
        int q = p + 1;
        while (q < e && q - p < 3 && Has(q, kCpNumber)) ++q;
        return q;
      }
      case 1: {  // [一-龥぀-ゟ゠-ヿ]+
        auto cjk = [&](int i) {
          const uint32_t c = cp(i);
          return (c >= 0x4E00 && c <= 0x9FA5) || (c >= 0x3040 && c <= 0x30FF);
        };
        return cjk(p) ? RunEnd(p, e, cjk) : -1;
      }
      default: {
        // [!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+
        if (IsAsciiPunct(cp(p)) && p + 1 < e && IsAsciiLetter(cp(p + 1))) {
          return RunEnd(p + 1, e, [&](int i) { return IsAsciiLetter(cp(i)); });
        }
        // [^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+
        auto letter_or_mark = [&](int i) { return Has(i, kCpLetter | kCpMark); };
        if (!CrLf(p) && !Has(p, kCpLetter | kCpPunctuation | kCpSymbol) && p + 1 < e &&
            letter_or_mark(p + 1)) {
          return RunEnd(p + 1, e, letter_or_mark);
        }
        if (letter_or_mark(p)) return RunEnd(p, e, letter_or_mark);
        // " ?[\p{P}\p{S}]+[\r\n]*"
        auto punct_or_symbol = [&](int i) { return Has(i, kCpPunctuation | kCpSymbol); };
        int start = -1;
        if (cp(p) == ' ' && p + 1 < e && punct_or_symbol(p + 1)) {
          start = p + 1;
        } else if (punct_or_symbol(p)) {
          start = p;
        }
        if (start >= 0) {
          const int q = RunEnd(start, e, punct_or_symbol);
          return RunEnd(q, e, [&](int i) { return CrLf(i); });
        }
        if (!Ws(p)) return -1;
        const int q = RunEnd(p, e, [&](int i) { return Ws(i); });
        // \s*[\r\n]+ : up to the last CR/LF of the whitespace run.
        for (int i = q - 1; i >= p; --i) {
          if (CrLf(i)) return i + 1;
        }
        // \s+(?!\S) : the run, less its last code point if a non-space follows.
        if (q == e) return q;
        if (q - 1 > p) return q - 1;
        // \s+
        return q;
      }
    }
  }

  static bool IsLlmPunct(uint32_t c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x7E) || (c >= 0xFF01 && c <= 0xFF0F) ||
           (c >= 0xFF1A && c <= 0xFF5E) || (c >= 0x2018 && c <= 0x201F) ||
           (c >= 0x3000 && c <= 0x3002);
  }

  int MatchLlm(int stage, int p, int e) const {
    switch (stage) {
      case 0:  // [\r\n]
        return CrLf(p) ? p + 1 : -1;
      case 1:    // \s?[A-Za-zµÀ-Ö...]+
      case 2: {  // \s?[!-/:-~！-／：-～‘-‟　-。]+
        auto in_class = [&](int i) {
          return stage == 1 ? Has(i, kCpDeepseekLlmLetter) : IsLlmPunct(cp(i));
        };
        if (Ws(p) && p + 1 < e && in_class(p + 1)) return RunEnd(p + 1, e, in_class);
        return in_class(p) ? RunEnd(p, e, in_class) : -1;
      }
      case 3: {  // \s+$
        if (!Ws(p)) return -1;
        const int q = RunEnd(p, e, [&](int i) { return Ws(i); });
        return q == e ? q : -1;
      }
      case 4: {  // [一-龥ࠀ-一가-퟿]+
        auto cjk = [&](int i) {
          const uint32_t c = cp(i);
          return (c >= 0x0800 && c <= 0x9FA5) || (c >= 0xAC00 && c <= 0xD7FF);
        };
        return cjk(p) ? RunEnd(p, e, cjk) : -1;
      }
      default: {  // \p{N}+
        auto number = [&](int i) { return Has(i, kCpNumber); };
        return number(p) ? RunEnd(p, e, number) : -1;
      }
    }
  }

  PreTokenizerKind kind_;
  const DecodedText& text_;
  absl::string_view bytes_;
  std::vector<absl::string_view>* pieces_;
};

}  // namespace

absl::string_view PreTokenizerKindName(PreTokenizerKind kind) {
  switch (kind) {
    case PreTokenizerKind::kDeepseekV3:
      return "deepseek-v3";
    case PreTokenizerKind::kDeepseekLlm:
      return "deepseek-llm";
  }
  return "?";
}

absl::StatusOr<PreTokenizerKind> PreTokenizerKindFromGgufName(absl::string_view pre) {
  if (pre == "deepseek-v3") return PreTokenizerKind::kDeepseekV3;
  if (pre == "deepseek-llm") return PreTokenizerKind::kDeepseekLlm;
  return absl::UnimplementedError(
      absl::StrCat("tokenizer.ggml.pre \"", pre,
                   "\" is not supported (moeflow knows \"deepseek-v3\" and \"deepseek-llm\")"));
}

const std::vector<std::string>& SplitRegexes(PreTokenizerKind kind) {
  static const auto* const kV3 = new std::vector<std::string>{
      u8"\\p{N}{1,3}",
      u8"[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
      u8"[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}"
      u8"\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
  };
  static const auto* const kLlm = new std::vector<std::string>{
      u8"[\r\n]",
      u8"\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293\u0295-"
      u8"\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c\u038e-\u03a1"
      u8"\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5\u13a0-\u13f5\u13f8-"
      u8"\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77\u1d79-\u1d9a\u1e00-\u1f15"
      u8"\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59\u1f5b\u1f5d\u1f5f-\u1f7d"
      u8"\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc\u1fd0-\u1fd3\u1fd6-\u1fdb"
      u8"\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107\u210a-\u2113\u2115\u2119-\u211d"
      u8"\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139\u213c-\u213f\u2145-\u2149\u214e"
      u8"\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee\u2cf2\u2cf3\ua640-\ua66d\ua680-"
      u8"\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17"
      u8"\uff21-\uff3a\uff41-\uff5a\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-"
      u8"\U000104fb\U00010c80-\U00010cb2\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-"
      u8"\U0001e943]+",
      u8"\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
      u8"\\s+$",
      u8"[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+",
      u8"\\p{N}+",
  };
  return kind == PreTokenizerKind::kDeepseekV3 ? *kV3 : *kLlm;
}

absl::StatusOr<PreTokenizerKind> PreTokenizerKindFromSplitRegexes(
    const std::vector<std::string>& patterns) {
  std::string first_difference;
  for (PreTokenizerKind kind : {PreTokenizerKind::kDeepseekV3, PreTokenizerKind::kDeepseekLlm}) {
    const std::vector<std::string>& known = SplitRegexes(kind);
    if (patterns == known) return kind;
    if (!patterns.empty() && !known.empty() && patterns[0] == known[0]) {
      for (size_t i = 0; i < patterns.size(); ++i) {
        if (i >= known.size() || patterns[i] != known[i]) {
          first_difference = absl::StrCat("Split #", i, " /", patterns[i], "/ differs from the ",
                                          PreTokenizerKindName(kind), " sequence");
          break;
        }
      }
      if (first_difference.empty()) {
        first_difference = absl::StrCat("the sequence is a prefix of the ",
                                        PreTokenizerKindName(kind), " sequence");
      }
    }
  }
  if (first_difference.empty()) {
    first_difference = patterns.empty() ? std::string("no Split regex")
                                        : absl::StrCat("unknown regex /", patterns[0], "/");
  }
  return absl::UnimplementedError(absl::StrCat(
      "pre-tokenizer not supported: ", first_difference,
      " (moeflow implements the DeepSeek-V3 and deepseek-llm Split sequences as scanners)"));
}

void PreTokenizer::Split(absl::string_view text, std::vector<absl::string_view>* pieces) const {
  if (text.empty()) return;
  // Scratch buffers reused across calls on the same thread.
  thread_local DecodedText decoded;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  // At most one code point per byte: size for that, trim afterwards.
  decoded.cps.resize(n);
  decoded.flags.resize(n);
  decoded.offsets.resize(n + 1);
  uint32_t* cps = decoded.cps.data();
  uint8_t* flags = decoded.flags.data();
  uint32_t* offsets = decoded.offsets.data();
  size_t count = 0;
  for (size_t i = 0; i < n; ++count) {
    uint32_t cp;
    const int len = DecodeUtf8(s, n, i, &cp);
    cps[count] = cp;
    flags[count] = CodePointFlags(cp);
    offsets[count] = static_cast<uint32_t>(i);
    i += len;
  }
  offsets[count] = static_cast<uint32_t>(n);
  decoded.cps.resize(count);
  decoded.flags.resize(count);
  decoded.offsets.resize(count + 1);
  Scanner scanner(kind_, decoded, text, pieces);
  scanner.Run(0, static_cast<int>(decoded.cps.size()));
}

}  // namespace moeflow
