// Byte-level BPE tokenizer (GPT-2 byte alphabet, merges by rank) for the
// DeepSeek model family: text ⇄ token ids.
//
// Role in the data flow: the CLI / server builds one BpeTokenizer from the
// model file (FromGguf, the tokenizer.ggml.* keys) or from a Hugging Face
// tokenizer.json (FromHfJsonFile), encodes prompts before prefill and decodes
// sampled ids back to bytes for streaming.
//
// Encode(text):
//   1. special tokens: added tokens (GGUF token types 3 control / 4
//      user-defined; tokenizer.json added_tokens) are cut out of the text
//      first, leftmost-longest, as the Hugging Face tokenizers do;
//   2. every stretch between them is split by the PreTokenizer
//      (pre_tokenizer.h; the regex sequence named by tokenizer.ggml.pre or
//      read from tokenizer.json);
//   3. each piece's UTF-8 bytes are BPE-merged: start from one token per byte,
//      repeatedly merge the adjacent pair of lowest merge rank (leftmost on a
//      tie) until no pair has a rank. Results are cached per piece.
// Decode(ids) concatenates each token's bytes: the GPT-2 byte alphabet mapped
// back to raw bytes for normal tokens, the text itself for added tokens.
//
// Invalid UTF-8 input is never rejected or replaced: each byte that is not
// part of a well-formed sequence becomes a code point of no Unicode class for
// pre-tokenization and is encoded by its own byte token, so
// Decode(Encode(s)) == s holds for every byte string s (without special-token
// text in s; those round-trip too but as one token). A JavaScript string
// cannot hold such bytes, so the reference tokenizer has no counterpart.
//
// Thread-safety: immutable after construction except for the internal piece
// cache, which is guarded by a mutex; Encode/Decode may be called
// concurrently. Failure: the factories return InvalidArgument naming the file
// and key / JSON field at fault, NotFound for a missing file, Unimplemented
// for tokenizer features moeflow does not implement (another model type or
// pre-tokenizer, byte fallback, ...). Encode and Decode never fail.
#ifndef MOEFLOW_TOKENIZER_BPE_TOKENIZER_H_
#define MOEFLOW_TOKENIZER_BPE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "tokenizer/pre_tokenizer.h"

namespace moeflow {

class GgufFile;

// llama.cpp's token types (tokenizer.ggml.token_type values).
enum class BpeTokenType : int32_t {
  kNormal = 1,  // byte-level BPE token (GPT-2 alphabet)
  kUnknown = 2,
  kControl = 3,      // special token (BOS, EOS, ...): matched in text, text decoded as is
  kUserDefined = 4,  // added token: matched in text, text decoded as is
  kUnused = 5,       // placeholder id; never produced by Encode, decodes to nothing
  kByte = 6,
};

// Everything a BpeTokenizer is built from.
struct BpeVocabulary {
  std::vector<std::string> tokens;        // by id; normal tokens in the GPT-2 byte alphabet
  std::vector<BpeTokenType> token_types;  // by id; empty: all normal
  std::vector<std::pair<std::string, std::string>> merges;  // by rank (0 merges first)
  PreTokenizerKind pre = PreTokenizerKind::kDeepseekV3;
  bool ignore_merges = false;  // HF BPE option: a piece that is a token is not merged
  int32_t bos_id = -1;         // -1: none
  int32_t eos_id = -1;
  bool add_bos = false;               // what the model file recommends (callers pass add_bos)
  std::string source = "vocabulary";  // file name for error messages
};

class BpeTokenizer {
 public:
  // Validates and indexes `vocab`. InvalidArgument if a merge names a token
  // that is not in the vocabulary (or its result is not), a byte has no
  // token, ids are duplicated, or BOS/EOS are out of range.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> Create(BpeVocabulary vocab);

  // From the tokenizer.ggml.* keys (model must be "gpt2").
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromGguf(const GgufFile& file);

  // From a Hugging Face tokenizer.json; BOS/EOS/add_bos_token come from the
  // tokenizer_config.json beside it when present (else from the added tokens
  // <｜begin▁of▁sentence｜> / <｜end▁of▁sentence｜>).
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromHfJsonFile(const std::string& path);
  // Same from memory; `name` is used in messages; `config_json` may be empty.
  static absl::StatusOr<std::unique_ptr<BpeTokenizer>> FromHfJson(absl::string_view json,
                                                                  absl::string_view config_json,
                                                                  const std::string& name);

  // Token ids of `text` (any bytes). `add_bos` prepends BOS when the
  // vocabulary has one. With `parse_special` false, control tokens are not
  // recognised in the text (user-defined ones still are, as in llama.cpp).
  std::vector<int32_t> Encode(absl::string_view text, bool add_bos,
                              bool parse_special = true) const;

  // The bytes of `ids`, concatenated. Ids outside [0, vocab_size()) decode to
  // nothing (a model's embedding may have more rows than the tokenizer ids).
  std::string Decode(absl::Span<const int32_t> ids) const;

  // The bytes token `id` stands for ("" when out of range or unused).
  absl::string_view TokenBytes(int32_t id) const;
  // The vocabulary spelling of `id` ("Ġthe", "<｜end▁of▁sentence｜>"); "" if out of range.
  absl::string_view TokenText(int32_t id) const;
  // The id whose vocabulary spelling is `text`.
  std::optional<int32_t> TokenId(absl::string_view text) const;
  BpeTokenType token_type(int32_t id) const { return types_[id]; }

  int64_t vocab_size() const { return static_cast<int64_t>(texts_.size()); }
  int64_t merge_count() const { return static_cast<int64_t>(merge_count_); }
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  bool add_bos() const { return add_bos_; }
  PreTokenizerKind pre_tokenizer() const { return pre_tokenizer_.kind(); }

  // Unicode version of the tables the pre-tokenizer uses (e.g. "17.0").
  static absl::string_view UnicodeVersion();

 private:
  explicit BpeTokenizer(PreTokenizerKind pre) : pre_tokenizer_(pre) {}

  struct Merge {
    int32_t rank;
    int32_t result;
  };
  struct TrieNode {
    int32_t token = -1;  // id of the added token ending here
  };

  // Appends the ids of text with no special token in it.
  void EncodeOrdinary(absl::string_view text, std::vector<int32_t>* ids) const;
  void EncodePiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  void MergePiece(absl::string_view piece, std::vector<int32_t>* ids) const;
  // Length in bytes of the longest added token at text[pos] (0: none), id in *id.
  size_t MatchAddedToken(absl::string_view text, size_t pos, bool parse_special, int32_t* id) const;

  PreTokenizer pre_tokenizer_;
  std::vector<std::string> texts_;  // vocabulary spelling by id
  std::vector<std::string> bytes_;  // decoded bytes by id
  std::vector<BpeTokenType> types_;
  absl::flat_hash_map<std::string, int32_t> text_to_id_;
  absl::flat_hash_map<std::string, int32_t> normal_bytes_to_id_;  // for ignore_merges
  int32_t byte_to_id_[256];
  absl::flat_hash_map<uint64_t, Merge> merges_;  // (left << 32 | right) → merge
  size_t merge_count_ = 0;
  bool ignore_merges_ = false;
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
  bool add_bos_ = false;

  // Added tokens as a byte trie: node 0 is the root; edges keyed node << 8 | byte.
  std::vector<TrieNode> trie_;
  absl::flat_hash_map<uint32_t, int32_t> trie_edges_;
  bool first_byte_starts_token_[256] = {};

  // Piece → ids. Cleared when it reaches kMaxCacheEntries.
  static constexpr size_t kMaxCacheEntries = 1 << 16;
  static constexpr size_t kMaxCachedPieceBytes = 64;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

// GPT-2's byte → code point table (printable stand-ins for all 256 bytes).
uint32_t ByteToAlphabetCodePoint(uint8_t byte);

}  // namespace moeflow

#endif  // MOEFLOW_TOKENIZER_BPE_TOKENIZER_H_
