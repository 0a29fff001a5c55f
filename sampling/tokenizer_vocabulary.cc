#include "sampling/tokenizer_vocabulary.h"

#include <string>
#include <vector>

namespace moeflow::sampling {

std::shared_ptr<const TokenVocabulary> VocabularyOf(const BpeTokenizer& tokenizer) {
  const int64_t n = tokenizer.vocab_size();
  std::vector<std::string> bytes(static_cast<size_t>(n));
  std::vector<bool> usable(static_cast<size_t>(n), false);
  for (int32_t id = 0; id < n; ++id) {
    bytes[id] = std::string(tokenizer.TokenBytes(id));
    const BpeTokenType type = tokenizer.token_type(id);
    usable[id] = type == BpeTokenType::kNormal || type == BpeTokenType::kByte;
  }
  std::vector<int32_t> end;
  if (tokenizer.eos_id() >= 0) end.push_back(tokenizer.eos_id());
  return TokenVocabulary::Create(std::move(bytes), std::move(usable), std::move(end));
}

}  // namespace moeflow::sampling
