// TokenVocabulary: the bytes each token id stands for, as a byte trie, for
// constrained decoding (grammar_constraint.h).
//
// Role in the data flow: the HTTP API builds one per served model from its
// tokenizer (the first time a request asks for a response_format) and every
// constrained sequence shares it. Masking the logits walks the trie: tokens
// that share their first bytes share the grammar steps over them, and a
// rejected prefix skips every token under it.
//
// The trie is stored in preorder: node i's subtree is [i, next) and its
// children start at i + 1, so a walk is one forward scan with skips. Node 0
// is the root (no byte, depth 0).
//
// Tokens that a grammar may never produce are left out: those marked not
// usable (special and control tokens: their text is not model output) and
// empty ones. `end_tokens` (EOS) are allowed only where the grammar may end.
//
// Thread-safety: immutable after Create. Failure: none (Create CHECKs that
// the arrays agree).
#ifndef MOEFLOW_SAMPLING_TOKEN_VOCABULARY_H_
#define MOEFLOW_SAMPLING_TOKEN_VOCABULARY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace moeflow::sampling {

class TokenVocabulary {
 public:
  struct TrieNode {
    uint8_t byte = 0;
    uint16_t depth = 0;         // bytes from the root
    uint32_t next = 0;          // the node after this subtree
    uint32_t tokens_begin = 0;  // tokens whose bytes end here: trie_tokens()[begin, end)
    uint32_t tokens_end = 0;
  };

  // `token_bytes[id]`: what token `id` decodes to; `usable[id]`: whether
  // a grammar may produce it. Tokens longer than 65535 bytes are left out.
  static std::shared_ptr<const TokenVocabulary> Create(std::vector<std::string> token_bytes,
                                                       std::vector<bool> usable,
                                                       std::vector<int32_t> end_tokens);

  int64_t size() const { return static_cast<int64_t>(bytes_.size()); }
  absl::string_view bytes(int32_t id) const { return bytes_[static_cast<size_t>(id)]; }
  // In the trie (usable, not empty, not an end token).
  bool in_trie(int32_t id) const { return in_trie_[static_cast<size_t>(id)]; }
  bool is_end(int32_t id) const { return is_end_[static_cast<size_t>(id)]; }
  const std::vector<int32_t>& end_tokens() const { return end_tokens_; }

  absl::Span<const TrieNode> trie() const { return trie_; }
  absl::Span<const int32_t> trie_tokens() const { return trie_tokens_; }
  int max_depth() const { return max_depth_; }

 private:
  TokenVocabulary() = default;

  std::vector<std::string> bytes_;
  std::vector<bool> in_trie_;
  std::vector<bool> is_end_;
  std::vector<int32_t> end_tokens_;
  std::vector<TrieNode> trie_;
  std::vector<int32_t> trie_tokens_;
  int max_depth_ = 0;
};

}  // namespace moeflow::sampling

#endif  // MOEFLOW_SAMPLING_TOKEN_VOCABULARY_H_
