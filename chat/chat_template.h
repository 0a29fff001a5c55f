// Chat templates: a conversation → the prompt text the model was trained on.
//
// Role in the data flow: the server / `moeflow chat` reads the model's
// template (GGUF `tokenizer.chat_template`, or `chat_template` of a Hugging
// Face tokenizer_config.json), calls RenderChat() with the request's messages
// and tokenizes the result (the text already starts with the BOS token, so the
// tokenizer must not add another: see RenderedPrompt::starts_with_bos).
//
// moeflow does not interpret Jinja. It recognizes the template by a
// fingerprint (SHA-256 of a canonical form: the text with whitespace control
// applied as Hugging Face's Jinja environment does — trim_blocks,
// lstrip_blocks, `-` markers — whitespace outside string literals removed
// inside tags, string escapes decoded, comments dropped) and renders the
// recognized family natively, reproducing the template's output byte for byte,
// quirks included. Known templates (see KnownChatTemplates()):
//
//   deepseek-v3       DeepSeek-V3 tokenizer_config.json (also in its GGUFs)
//   deepseek-r1       DeepSeek-R1 tokenizer_config.json, revision of Feb 2025:
//                     generation prompt "<｜Assistant｜><think>\n"
//   deepseek-r1-2501  DeepSeek-R1 as first released (Jan 2025): generation
//                     prompt "<｜Assistant｜>"
//   deepseek-v2       DeepSeek-V2(-Lite)-Chat ("User: ...\n\nAssistant:"),
//                     the template of moeflow's tiny GGUF fixtures
//
// What the DeepSeek V3/R1 templates do (and so RenderChat does):
//   * BOS first, then all system messages joined by "\n\n", wherever they are;
//   * user → "<｜User｜>" + content; assistant → "<｜Assistant｜>" + content +
//     "<｜end▁of▁sentence｜>"; R1 drops everything up to the last "</think>"
//     of earlier assistant turns (reasoning is not fed back);
//   * tool calls → "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function
//     <｜tool▁sep｜>NAME\n```json\nARGS\n```<｜tool▁call▁end｜>"..., tool
//     results → "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>...
//     <｜tool▁output▁end｜>"... "<｜tool▁outputs▁end｜>";
//   * the `tools` list is NOT rendered by any of these templates (Hugging
//     Face's apply_chat_template gives the same text with or without it); a
//     server that wants the model to know its tools must describe them in a
//     system message;
//   * reasoning_content, tool_call_id and name are not rendered.
// V3's template has state that is never reset (its first tool call of the
// whole conversation opens "<｜Assistant｜><｜tool▁calls▁begin｜>", later calls
// don't; "<｜tool▁calls▁end｜>" follows every call but the first); moeflow
// renders those quirks as the template does, since that is what the model saw
// and what other engines feed it.
//
// Thread-safety: pure functions. Failure: InvalidArgument for messages the
// template cannot render (naming messages[i]); Unimplemented for a template
// that is not recognized when no fallback is allowed.
#ifndef MOEFLOW_CHAT_CHAT_TEMPLATE_H_
#define MOEFLOW_CHAT_CHAT_TEMPLATE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "chat/chat_message.h"

namespace moeflow::chat {

struct ChatTemplateOptions {
  // End with the text that starts the assistant's turn (false by default, as
  // in Hugging Face's apply_chat_template; a server generating a reply sets it).
  bool add_generation_prompt = false;
  // Make sure the generation prompt ends with "<think>\n" (R1: forces the
  // reasoning block; deepseek-r1 already does it, deepseek-r1-2501 and
  // deepseek-v3 do not). Only where a generation prompt is emitted.
  bool force_think = false;
  // The template's bos_token / eos_token variables (the DeepSeek V3/R1
  // templates write "<｜end▁of▁sentence｜>" literally; deepseek-v2 uses eos).
  std::string bos_token = "<｜begin▁of▁sentence｜>";
  std::string eos_token = "<｜end▁of▁sentence｜>";
  // The request's tools; passed for completeness, not rendered (see above).
  std::vector<ToolDefinition> tools;
  // A known template name to render with when the template text is not
  // recognized (or empty); "" = return Unimplemented instead.
  std::string fallback_template;
  // Rewrite the tool turns a template cannot render (tool_polyfill.h) before
  // rendering, so that OpenAI's tool round-trip works with every template.
  // Off: the template's own behaviour (errors included), byte for byte.
  bool polyfill_tool_messages = false;
};

struct RenderedPrompt {
  std::string text;
  // The template family rendered ("deepseek-v3", ...).
  std::string template_name;
  // Empty when the template was recognized; otherwise which known template
  // was used instead and why, e.g.
  //   "deepseek-v3 (template not recognized: sha256 3f2a9c0d1e4b5a67)".
  std::string fallback_used;
  // The text starts with bos_token: tokenize it without adding BOS.
  bool starts_with_bos = false;
  // The text ends inside an opened reasoning block ("<think>\n"): the model's
  // output starts with reasoning (see ParseAssistantOutput).
  bool opens_think = false;
};

absl::StatusOr<RenderedPrompt> RenderChat(absl::string_view template_text,
                                          const std::vector<ChatMessage>& messages,
                                          const ChatTemplateOptions& options);

// The known template names, in a stable order.
std::vector<std::string> KnownChatTemplates();

// The name of the known template `template_text` is, or Unimplemented naming
// its fingerprint.
absl::StatusOr<std::string> IdentifyChatTemplate(absl::string_view template_text);

// The canonical form and its SHA-256 (64 hex digits) used for recognition.
std::string CanonicalTemplateText(absl::string_view template_text);
std::string ChatTemplateFingerprint(absl::string_view template_text);

}  // namespace moeflow::chat

#endif  // MOEFLOW_CHAT_CHAT_TEMPLATE_H_
