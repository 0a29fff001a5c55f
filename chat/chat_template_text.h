// Chat template texts moeflow writes into the files it makes.
//
// Role in the data flow: `moeflow mkmodel` embeds a template as
// `tokenizer.chat_template` so that `moeflow chat` works on generated models
// (model_generator.h); the text is one RenderChat() recognizes
// (chat_template.h), so rendering needs no fallback.
//
// Thread-safety: returns static text. Failure: none.
#ifndef MOEFLOW_CHAT_CHAT_TEMPLATE_TEXT_H_
#define MOEFLOW_CHAT_CHAT_TEMPLATE_TEXT_H_

#include "absl/strings/string_view.h"

namespace moeflow::chat {

// The `chat_template` of DeepSeek-V3's tokenizer_config.json, byte for byte
// (tests/chat/templates/deepseek-v3.jinja), recognized as "deepseek-v3".
absl::string_view DeepseekV3ChatTemplateText();

}  // namespace moeflow::chat

#endif  // MOEFLOW_CHAT_CHAT_TEMPLATE_TEXT_H_
