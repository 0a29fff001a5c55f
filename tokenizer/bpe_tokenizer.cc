#include "tokenizer/bpe_tokenizer.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/gguf.h"
#include "tokenizer/unicode_tables.h"

namespace moeflow {
namespace {

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// The GPT-2 alphabet as a table: code point → byte, -1 outside the alphabet.
// The alphabet's code points are all below U+0144.
constexpr uint32_t kAlphabetLimit = 0x144;
const std::vector<int>& AlphabetToByte() {
  static const auto* const table = [] {
    auto* t = new std::vector<int>(kAlphabetLimit, -1);
    for (int b = 0; b < 256; ++b) (*t)[ByteToAlphabetCodePoint(static_cast<uint8_t>(b))] = b;
    return t;
  }();
  return *table;
}

// Raw bytes of a normal token's alphabet spelling. Code points outside the
// alphabet (not produced by a byte-level vocabulary) are kept as UTF-8.
std::string AlphabetToBytes(absl::string_view text) {
  const std::vector<int>& table = AlphabetToByte();
  std::string out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0; i < text.size();) {
    uint32_t cp = s[i];
    int len = 1;
    if (cp >= 0xC0 && cp < 0xE0 && i + 1 < text.size()) {
      cp = ((cp & 0x1F) << 6) | (s[i + 1] & 0x3F);
      len = 2;
    }
    if (len == 2 && cp < kAlphabetLimit && table[cp] >= 0) {
      out.push_back(static_cast<char>(table[cp]));
    } else if (len == 1 && cp < 0x80 && table[cp] >= 0) {
      out.push_back(static_cast<char>(cp));
    } else {
      // Not an alphabet character: copy the whole UTF-8 sequence unchanged.
      int seq = 1;
      if (s[i] >= 0xC0) seq = s[i] >= 0xF0 ? 4 : s[i] >= 0xE0 ? 3 : 2;
      seq = static_cast<int>(std::min<size_t>(seq, text.size() - i));
      out.append(text.substr(i, seq).data(), seq);
      len = seq;
    }
    i += len;
  }
  return out;
}

std::string Escape(absl::string_view s) {
  std::string out;
  for (unsigned char c : s) {
    if (c >= 0x20 && c < 0x7F && c != '\\' && c != '"') {
      out.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&out, "\\x%02x", c);
    }
  }
  return out;
}

}  // namespace

uint32_t ByteToAlphabetCodePoint(uint8_t byte) {
  // Printable Latin-1 bytes stand for themselves; the 68 others (controls,
  // space, DEL, NBSP, soft hyphen) take U+0100.. in byte order.
  const auto printable = [](int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  if (printable(byte)) return byte;
  uint32_t n = 0;
  for (int b = 0; b < byte; ++b) {
    if (!printable(b)) ++n;
  }
  return 0x100 + n;
}

absl::string_view BpeTokenizer::UnicodeVersion() { return unicode_internal::kUnicodeVersion; }

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::Create(BpeVocabulary vocab) {
  const std::string& src = vocab.source;
  const size_t n = vocab.tokens.size();
  if (n == 0) return absl::InvalidArgumentError(absl::StrCat(src, ": the vocabulary is empty"));
  if (n > 0x7FFFFFFF) return absl::InvalidArgumentError(absl::StrCat(src, ": too many tokens"));
  if (vocab.token_types.empty()) vocab.token_types.assign(n, BpeTokenType::kNormal);
  if (vocab.token_types.size() != n) {
    return absl::InvalidArgumentError(
        absl::StrCat(src, ": ", vocab.token_types.size(), " token types for ", n, " tokens"));
  }
  std::unique_ptr<BpeTokenizer> t(new BpeTokenizer(vocab.pre));
  t->types_ = std::move(vocab.token_types);
  t->texts_ = std::move(vocab.tokens);
  t->bytes_.resize(n);
  t->text_to_id_.reserve(n);
  t->normal_bytes_to_id_.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    const std::string& text = t->texts_[id];
    const BpeTokenType type = t->types_[id];
    const bool added = type == BpeTokenType::kControl || type == BpeTokenType::kUserDefined;
    // First spelling wins, except that an added token takes over a normal one.
    auto [it, inserted] = t->text_to_id_.try_emplace(text, static_cast<int32_t>(id));
    if (!inserted && added && t->types_[it->second] == BpeTokenType::kNormal) {
      it->second = static_cast<int32_t>(id);
    }
    if (type == BpeTokenType::kNormal) {
      t->bytes_[id] = AlphabetToBytes(text);
      t->normal_bytes_to_id_.try_emplace(t->bytes_[id], static_cast<int32_t>(id));
    } else if (type != BpeTokenType::kUnused) {
      t->bytes_[id] = text;
    }
    if (added && !text.empty()) {
      if (t->trie_.empty()) t->trie_.emplace_back();
      int32_t node = 0;
      for (unsigned char c : text) {
        const uint32_t key = (static_cast<uint32_t>(node) << 8) | c;
        auto edge = t->trie_edges_.find(key);
        if (edge == t->trie_edges_.end()) {
          t->trie_.emplace_back();
          edge = t->trie_edges_.emplace(key, static_cast<int32_t>(t->trie_.size() - 1)).first;
        }
        node = edge->second;
      }
      if (t->trie_[node].token < 0) t->trie_[node].token = static_cast<int32_t>(id);
      t->first_byte_starts_token_[static_cast<unsigned char>(text[0])] = true;
    }
  }
  for (int b = 0; b < 256; ++b) {
    std::string spelling;
    AppendUtf8(ByteToAlphabetCodePoint(static_cast<uint8_t>(b)), &spelling);
    auto it = t->text_to_id_.find(spelling);
    if (it == t->text_to_id_.end() || t->types_[it->second] != BpeTokenType::kNormal) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "%s: no normal token for byte 0x%02x (spelled \"%s\"); a byte-level BPE vocabulary "
          "needs all 256",
          src, b, spelling));
    }
    t->byte_to_id_[b] = it->second;
  }
  auto normal_id = [&](const std::string& text) -> int32_t {
    auto it = t->text_to_id_.find(text);
    if (it == t->text_to_id_.end() || t->types_[it->second] != BpeTokenType::kNormal) return -1;
    return it->second;
  };
  t->merges_.reserve(vocab.merges.size());
  for (size_t rank = 0; rank < vocab.merges.size(); ++rank) {
    const auto& [left, right] = vocab.merges[rank];
    const int32_t l = normal_id(left);
    const int32_t r = normal_id(right);
    const int32_t result = normal_id(left + right);
    if (l < 0 || r < 0 || result < 0) {
      return absl::InvalidArgumentError(absl::StrCat(src, ": merge #", rank, " \"", Escape(left),
                                                     " ", Escape(right), "\": \"",
                                                     Escape(l < 0   ? left
                                                            : r < 0 ? right
                                                                    : left + right),
                                                     "\" is not a normal token"));
    }
    // A repeated pair keeps its last rank, as the reference implementations do.
    t->merges_[(static_cast<uint64_t>(l) << 32) | static_cast<uint32_t>(r)] =
        Merge{static_cast<int32_t>(rank), result};
  }
  t->merge_count_ = vocab.merges.size();
  for (int32_t id : {vocab.bos_id, vocab.eos_id}) {
    if (id < -1 || id >= static_cast<int64_t>(n)) {
      return absl::InvalidArgumentError(
          absl::StrCat(src, ": BOS/EOS id ", id, " is outside the vocabulary of ", n));
    }
  }
  t->bos_id_ = vocab.bos_id;
  t->eos_id_ = vocab.eos_id;
  t->add_bos_ = vocab.add_bos;
  t->ignore_merges_ = vocab.ignore_merges;
  return t;
}

absl::StatusOr<std::unique_ptr<BpeTokenizer>> BpeTokenizer::FromGguf(const GgufFile& file) {
  const std::string& path = file.path();
  auto with_path = [&](const absl::Status& s) {
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  };
  BpeVocabulary vocab;
  vocab.source = path;
  absl::StatusOr<std::string> model = file.GetString("tokenizer.ggml.model");
  if (!model.ok()) return with_path(model.status());
  if (*model != "gpt2") {
    return absl::UnimplementedError(
        absl::StrCat(path, ": tokenizer.ggml.model \"", *model,
                     "\" is not supported (only \"gpt2\", byte-level BPE)"));
  }
  absl::StatusOr<std::string> pre = file.GetString("tokenizer.ggml.pre");
  if (!pre.ok()) return with_path(pre.status());
  absl::StatusOr<PreTokenizerKind> kind = PreTokenizerKindFromGgufName(*pre);
  if (!kind.ok()) return with_path(kind.status());
  vocab.pre = *kind;
  absl::StatusOr<std::vector<std::string>> tokens = file.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) return with_path(tokens.status());
  vocab.tokens = std::move(*tokens);
  if (file.Find("tokenizer.ggml.token_type") != nullptr) {
    absl::StatusOr<std::vector<int64_t>> types = file.GetIntArray("tokenizer.ggml.token_type");
    if (!types.ok()) return with_path(types.status());
    vocab.token_types.reserve(types->size());
    for (size_t i = 0; i < types->size(); ++i) {
      const int64_t v = (*types)[i];
      if (v < 1 || v > 6) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": tokenizer.ggml.token_type[", i,
                                                       "] = ", v, " is not a token type (1..6)"));
      }
      vocab.token_types.push_back(static_cast<BpeTokenType>(v));
    }
  }
  absl::StatusOr<std::vector<std::string>> merges = file.GetStringArray("tokenizer.ggml.merges");
  if (!merges.ok()) return with_path(merges.status());
  vocab.merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const std::string& m = (*merges)[i];
    const size_t space = m.find(' ');
    if (space == std::string::npos || m.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tokenizer.ggml.merges[", i, "] \"",
                                                     Escape(m), "\" is not \"left right\""));
    }
    vocab.merges.emplace_back(m.substr(0, space), m.substr(space + 1));
  }
  for (auto [key, out] :
       {std::pair<const char*, int32_t*>{"tokenizer.ggml.bos_token_id", &vocab.bos_id},
        {"tokenizer.ggml.eos_token_id", &vocab.eos_id}}) {
    absl::StatusOr<int64_t> v = file.GetIntOr(key, -1);
    if (!v.ok()) return with_path(v.status());
    if (*v < -1 || *v >= static_cast<int64_t>(vocab.tokens.size())) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": ", key, " = ", *v, " is outside the vocabulary of ", vocab.tokens.size()));
    }
    *out = static_cast<int32_t>(*v);
  }
  absl::StatusOr<bool> add_bos = file.GetBoolOr("tokenizer.ggml.add_bos_token", false);
  if (!add_bos.ok()) return with_path(add_bos.status());
  vocab.add_bos = *add_bos;
  return Create(std::move(vocab));
}

size_t BpeTokenizer::MatchAddedToken(absl::string_view text, size_t pos, bool parse_special,
                                     int32_t* id) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    auto edge =
        trie_edges_.find((static_cast<uint32_t>(node) << 8) | static_cast<unsigned char>(text[i]));
    if (edge == trie_edges_.end()) break;
    node = edge->second;
    const int32_t token = trie_[node].token;
    if (token >= 0 && (parse_special || types_[token] == BpeTokenType::kUserDefined)) {
      best = i + 1 - pos;
      *id = token;
    }
  }
  return best;
}

std::vector<int32_t> BpeTokenizer::Encode(absl::string_view text, bool add_bos,
                                          bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 2);
  if (add_bos && bos_id_ >= 0) ids.push_back(bos_id_);
  if (trie_.empty()) {
    EncodeOrdinary(text, &ids);
    return ids;
  }
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    int32_t id = -1;
    const size_t len = first_byte_starts_token_[static_cast<unsigned char>(text[i])]
                           ? MatchAddedToken(text, i, parse_special, &id)
                           : 0;
    if (len == 0) {
      ++i;
      continue;
    }
    EncodeOrdinary(text.substr(start, i - start), &ids);
    ids.push_back(id);
    i += len;
    start = i;
  }
  EncodeOrdinary(text.substr(start), &ids);
  return ids;
}

void BpeTokenizer::EncodeOrdinary(absl::string_view text, std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  thread_local std::vector<absl::string_view> pieces;
  pieces.clear();
  pre_tokenizer_.Split(text, &pieces);
  for (absl::string_view piece : pieces) EncodePiece(piece, ids);
}

void BpeTokenizer::EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  if (piece.size() == 1) {
    ids->push_back(byte_to_id_[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() == 2 && !ignore_merges_) {
    // One possible merge: cheaper than a cache lookup.
    const int32_t left = byte_to_id_[static_cast<unsigned char>(piece[0])];
    const int32_t right = byte_to_id_[static_cast<unsigned char>(piece[1])];
    auto it = merges_.find((static_cast<uint64_t>(left) << 32) | static_cast<uint32_t>(right));
    if (it != merges_.end()) {
      ids->push_back(it->second.result);
    } else {
      ids->push_back(left);
      ids->push_back(right);
    }
    return;
  }
  if (ignore_merges_) {
    auto it = normal_bytes_to_id_.find(piece);
    if (it != normal_bytes_to_id_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = piece.size() <= kMaxCachedPieceBytes;
  if (cacheable) {
    absl::MutexLock lock(&cache_mu_);
    auto it = cache_.find(piece);
    if (it != cache_.end()) {
      ids->insert(ids->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = ids->size();
  MergePiece(piece, ids);
  if (cacheable) {
    std::vector<int32_t> result(ids->begin() + first, ids->end());
    absl::MutexLock lock(&cache_mu_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(piece, std::move(result));
  }
}

void BpeTokenizer::MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const {
  // Symbols are a linked list over byte positions; a merged symbol lives at
  // its left position. Candidate merges wait in a min-heap ordered by (rank,
  // position): lowest rank first, leftmost on a tie. Entries made stale by an
  // earlier merge are recognised by their ids no longer being in place (a
  // symbol's id only ever changes to a longer token's).
  struct Candidate {
    int32_t rank;
    int32_t left;
    int32_t left_id;
    int32_t right_id;
    int32_t result;
    bool operator>(const Candidate& o) const {
      return rank != o.rank ? rank > o.rank : left > o.left;
    }
  };
  const int32_t n = static_cast<int32_t>(piece.size());
  thread_local std::vector<int32_t> sym;
  thread_local std::vector<int32_t> prev;
  thread_local std::vector<int32_t> next;
  thread_local std::vector<Candidate> heap;
  sym.resize(n);
  prev.resize(n);
  next.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    sym[i] = byte_to_id_[static_cast<unsigned char>(piece[i])];
    prev[i] = i - 1;
    next[i] = i + 1;
  }
  heap.clear();
  const std::greater<Candidate> later;
  auto consider = [&](int32_t left) {
    const int32_t right = next[left];
    auto it =
        merges_.find((static_cast<uint64_t>(sym[left]) << 32) | static_cast<uint32_t>(sym[right]));
    if (it != merges_.end()) {
      heap.push_back(Candidate{it->second.rank, left, sym[left], sym[right], it->second.result});
      std::push_heap(heap.begin(), heap.end(), later);
    }
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const Candidate c = heap.back();
    heap.pop_back();
    if (sym[c.left] != c.left_id) continue;
    const int32_t right = next[c.left];
    if (right >= n || sym[right] != c.right_id) continue;
    sym[c.left] = c.result;
    sym[right] = -1;
    next[c.left] = next[right];
    if (next[right] < n) prev[next[right]] = c.left;
    if (prev[c.left] >= 0) consider(prev[c.left]);
    if (next[c.left] < n) consider(c.left);
  }
  for (int32_t i = 0; i < n; i = next[i]) ids->push_back(sym[i]);
}

std::string BpeTokenizer::Decode(absl::Span<const int32_t> ids) const {
  std::string out;
  for (int32_t id : ids) {
    if (id >= 0 && id < static_cast<int64_t>(bytes_.size())) out += bytes_[id];
  }
  return out;
}

absl::string_view BpeTokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(bytes_.size())) return {};
  return bytes_[id];
}

absl::string_view BpeTokenizer::TokenText(int32_t id) const {
  if (id < 0 || id >= static_cast<int64_t>(texts_.size())) return {};
  return texts_[id];
}

std::optional<int32_t> BpeTokenizer::TokenId(absl::string_view text) const {
  auto it = text_to_id_.find(text);
  if (it == text_to_id_.end()) return std::nullopt;
  return it->second;
}

}  // namespace moeflow
