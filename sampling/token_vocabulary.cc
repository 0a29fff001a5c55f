#include "sampling/token_vocabulary.h"

#include <algorithm>
#include <utility>

#include "base/check.h"

namespace moeflow::sampling {

std::shared_ptr<const TokenVocabulary> TokenVocabulary::Create(std::vector<std::string> token_bytes,
                                                               std::vector<bool> usable,
                                                               std::vector<int32_t> end_tokens) {
  MOEFLOW_CHECK(usable.size() == token_bytes.size());
  std::shared_ptr<TokenVocabulary> v(new TokenVocabulary());
  const size_t n = token_bytes.size();
  v->is_end_.assign(n, false);
  for (int32_t t : end_tokens) {
    if (t >= 0 && static_cast<size_t>(t) < n && !v->is_end_[t]) {
      v->is_end_[t] = true;
      v->end_tokens_.push_back(t);
    }
  }
  v->in_trie_.assign(n, false);
  std::vector<int32_t> order;
  for (size_t i = 0; i < n; ++i) {
    if (usable[i] && !v->is_end_[i] && !token_bytes[i].empty() && token_bytes[i].size() <= 65535) {
      v->in_trie_[i] = true;
      order.push_back(static_cast<int32_t>(i));
    }
  }
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    const int c = token_bytes[a].compare(token_bytes[b]);
    return c != 0 ? c < 0 : a < b;
  });
  // Sorted strings give the trie in preorder: each string adds the nodes
  // past its common prefix with the previous one.
  v->trie_.push_back({});            // the root
  std::vector<uint32_t> path = {0};  // node at each depth of the current string
  const std::string* previous = nullptr;
  for (int32_t id : order) {
    const std::string& s = token_bytes[id];
    size_t common = 0;
    if (previous != nullptr) {
      while (common < s.size() && common < previous->size() && s[common] == (*previous)[common]) {
        ++common;
      }
    }
    // Close the nodes of the previous string below the common prefix.
    while (path.size() > common + 1) {
      v->trie_[path.back()].next = static_cast<uint32_t>(v->trie_.size());
      path.pop_back();
    }
    for (size_t d = common; d < s.size(); ++d) {
      TrieNode node;
      node.byte = static_cast<uint8_t>(s[d]);
      node.depth = static_cast<uint16_t>(d + 1);
      node.tokens_begin = node.tokens_end = static_cast<uint32_t>(v->trie_tokens_.size());
      path.push_back(static_cast<uint32_t>(v->trie_.size()));
      v->trie_.push_back(node);
    }
    // Equal strings are adjacent, so a node's tokens are contiguous.
    TrieNode& last = v->trie_[path.back()];
    if (last.tokens_begin == last.tokens_end) {
      last.tokens_begin = static_cast<uint32_t>(v->trie_tokens_.size());
    }
    v->trie_tokens_.push_back(id);
    last.tokens_end = static_cast<uint32_t>(v->trie_tokens_.size());
    v->max_depth_ = std::max(v->max_depth_, static_cast<int>(s.size()));
    previous = &s;
  }
  while (!path.empty()) {
    v->trie_[path.back()].next = static_cast<uint32_t>(v->trie_.size());
    path.pop_back();
  }
  v->bytes_ = std::move(token_bytes);
  return v;
}

}  // namespace moeflow::sampling
