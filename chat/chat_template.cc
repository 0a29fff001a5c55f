#include "chat/chat_template.h"

#include <openssl/evp.h>

#include <cstdio>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/check.h"
#include "chat/tool_polyfill.h"

namespace moeflow::chat {
namespace {

// ---------------------------------------------------------------------------
// Canonical form (recognition only; nothing is evaluated).

enum class SegmentKind { kText, kExpression, kStatement, kComment };

struct Segment {
  SegmentKind kind;
  std::string body;          // inner text for tags, raw text otherwise
  bool trim_before = false;  // "{%-": strip whitespace before the tag
  bool trim_after = false;   // "-%}": strip whitespace after the tag
};

bool IsSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f'; }

// Splits into text and tags. Inside a tag, quotes are tracked so that a
// "%}" inside a string literal does not close it. An unclosed tag becomes
// text (the canonical form of broken templates only has to be stable).
std::vector<Segment> SplitTemplate(absl::string_view t) {
  std::vector<Segment> out;
  size_t i = 0;
  std::string text;
  while (i < t.size()) {
    const bool opens =
        t[i] == '{' && i + 1 < t.size() && (t[i + 1] == '{' || t[i + 1] == '%' || t[i + 1] == '#');
    if (!opens) {
      text += t[i++];
      continue;
    }
    const char kind = t[i + 1];
    const char close = kind == '{' ? '}' : kind;
    size_t j = i + 2;
    char quote = 0;
    size_t end = absl::string_view::npos;
    for (; j + 1 < t.size(); ++j) {
      const char c = t[j];
      if (quote != 0) {
        if (c == '\\') {
          ++j;
        } else if (c == quote) {
          quote = 0;
        }
      } else if (kind != '#' && (c == '\'' || c == '"')) {
        quote = c;
      } else if (c == close && t[j + 1] == '}') {
        end = j;
        break;
      }
    }
    if (end == absl::string_view::npos) {
      text.append(t.data() + i, t.size() - i);
      break;
    }
    if (!text.empty()) out.push_back({SegmentKind::kText, std::exchange(text, std::string())});
    Segment tag;
    tag.kind = kind == '{'   ? SegmentKind::kExpression
               : kind == '%' ? SegmentKind::kStatement
                             : SegmentKind::kComment;
    absl::string_view body = t.substr(i + 2, end - (i + 2));
    if (!body.empty() && (body.front() == '-' || body.front() == '+')) {
      tag.trim_before = body.front() == '-';
      body.remove_prefix(1);
    }
    if (!body.empty() && (body.back() == '-' || body.back() == '+')) {
      tag.trim_after = body.back() == '-';
      body.remove_suffix(1);
    }
    tag.body = std::string(body);
    out.push_back(std::move(tag));
    i = end + 2;
  }
  if (!text.empty()) out.push_back({SegmentKind::kText, std::move(text)});
  return out;
}

// Tag body without whitespace outside literals; literals decoded and
// re-quoted with single quotes.
std::string CanonicalTagBody(absl::string_view body) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (IsSpace(c)) continue;
    if (c != '\'' && c != '"') {
      out += c;
      continue;
    }
    std::string literal;
    size_t j = i + 1;
    for (; j < body.size() && body[j] != c; ++j) {
      if (body[j] == '\\' && j + 1 < body.size()) {
        const char e = body[++j];
        literal += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
      } else {
        literal += body[j];
      }
    }
    i = j;
    out += '\'';
    for (char l : literal) {
      if (l == '\'' || l == '\\') out += '\\';
      if (l == '\n') {
        out += "\\n";
      } else {
        out += l;
      }
    }
    out += '\'';
  }
  return out;
}

bool IsBlock(const Segment& s) {
  return s.kind == SegmentKind::kStatement || s.kind == SegmentKind::kComment;
}

// ---------------------------------------------------------------------------
// The known templates.

enum class Style { kV3, kR1, kV2 };

struct KnownTemplate {
  const char* name;
  Style style;
  // "\n" between tool outputs after the first (V3) or nothing (R1).
  const char* tool_output_separator;
  // Cut earlier assistant turns to the text after the last "</think>".
  bool strip_think;
  const char* generation_prompt;
  // SHA-256 of the canonical text (ChatTemplateFingerprint).
  const char* fingerprint;
};

constexpr char kEos[] = "<｜end▁of▁sentence｜>";
constexpr char kUser[] = "<｜User｜>";
constexpr char kAssistant[] = "<｜Assistant｜>";
constexpr char kCallsBegin[] = "<｜tool▁calls▁begin｜>";
constexpr char kCallsEnd[] = "<｜tool▁calls▁end｜>";
constexpr char kCallBegin[] = "<｜tool▁call▁begin｜>";
constexpr char kOutputsBegin[] = "<｜tool▁outputs▁begin｜>";
constexpr char kOutputsEnd[] = "<｜tool▁outputs▁end｜>";
constexpr char kOutputBegin[] = "<｜tool▁output▁begin｜>";
constexpr char kOutputEnd[] = "<｜tool▁output▁end｜>";
constexpr char kThinkOpen[] = "<think>\n";

// Fingerprints: tests/chat/chat_template_test.cc recomputes each from the
// template files in tests/chat/templates/ (where their sources are noted).
const KnownTemplate kKnownTemplates[] = {
    {"deepseek-v3", Style::kV3, "\n", false, "<｜Assistant｜>",
     "693b56377af532f27fcaaefccfe85f6381c8403c338cb0fb09df20c9bc3eeecb"},
    {"deepseek-r1", Style::kR1, "", true, "<｜Assistant｜><think>\n",
     "6b3d46136aca5fb2140a8b51bc061bea157db7401ed65da62baa79b63d401478"},
    {"deepseek-r1-2501", Style::kR1, "", true, "<｜Assistant｜>",
     "b5abcdcf5f68b696826489e7caa57a9b29ccd81f38aadce666d302c3fe765630"},
    {"deepseek-v2", Style::kV2, "", false,
     "Assistant:", "8e2382e6297d7f3ebc04059d64884350bab78a5f1944fe318f301c83fe4ce4c6"},
};

const KnownTemplate* FindByName(absl::string_view name) {
  for (const KnownTemplate& known : kKnownTemplates) {
    if (name == known.name) return &known;
  }
  return nullptr;
}

const KnownTemplate* FindByFingerprint(absl::string_view fingerprint) {
  for (const KnownTemplate& known : kKnownTemplates) {
    if (fingerprint == known.fingerprint) return &known;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------
// Rendering.

std::string RenderCall(const ToolCall& call) {
  return absl::StrCat(call.type, "<｜tool▁sep｜>", call.name, "\n```json\n", call.arguments,
                      "\n```<｜tool▁call▁end｜>");
}

// R1's `content.split('</think>')[-1]`.
std::string AfterLastThinkEnd(const std::string& content) {
  const size_t at = content.rfind("</think>");
  return at == std::string::npos ? content : content.substr(at + 8);
}

absl::Status CheckRenderable(const std::vector<ChatMessage>& messages, Style style) {
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& m = messages[i];
    const bool calls = m.role == ChatRole::kAssistant && !m.tool_calls.empty();
    if (!m.content.has_value() && (!calls || style == Style::kV2)) {
      return absl::InvalidArgumentError(
          absl::StrCat("messages[", i, "].content: ",
                       calls ? "the deepseek-v2 template cannot render tool calls without content"
                             : absl::StrCat("expected a string for role ", ChatRoleName(m.role))));
    }
  }
  return absl::OkStatus();
}

std::string RenderDeepSeek(const KnownTemplate& tmpl, const std::vector<ChatMessage>& messages,
                           const ChatTemplateOptions& options, bool* emitted_generation_prompt) {
  std::string out = options.bos_token;
  bool first_system = true;
  for (const ChatMessage& m : messages) {
    if (m.role != ChatRole::kSystem) continue;
    if (!first_system) out += "\n\n";
    out += *m.content;
    first_system = false;
  }
  bool is_first = false;  // a tool call was rendered (never reset)
  bool is_tool = false;   // inside tool outputs
  bool is_output_first = true;
  for (const ChatMessage& m : messages) {
    switch (m.role) {
      case ChatRole::kSystem:
        break;
      case ChatRole::kUser:
        is_tool = false;
        absl::StrAppend(&out, kUser, *m.content);
        break;
      case ChatRole::kTool:
        is_tool = true;
        if (is_output_first) {
          absl::StrAppend(&out, kOutputsBegin, kOutputBegin, *m.content, kOutputEnd);
          is_output_first = false;
        } else {
          absl::StrAppend(&out, tmpl.tool_output_separator, kOutputBegin, *m.content, kOutputEnd);
        }
        break;
      case ChatRole::kAssistant: {
        // V3 renders tool calls only when content is null; R1 whenever the
        // message has tool calls.
        const bool render_calls =
            tmpl.style == Style::kV3 ? !m.content.has_value() : !m.tool_calls.empty();
        if (render_calls) {
          is_tool = false;
          for (const ToolCall& call : m.tool_calls) {
            if (!is_first) {
              absl::StrAppend(&out, kAssistant, m.content.value_or(""), kCallsBegin, kCallBegin,
                              RenderCall(call));
              is_first = true;
            } else {
              absl::StrAppend(&out, "\n", kCallBegin, RenderCall(call));
              if (tmpl.style == Style::kV3) absl::StrAppend(&out, kCallsEnd, kEos);
            }
          }
          if (tmpl.style == Style::kR1) absl::StrAppend(&out, kCallsEnd, kEos);
          break;
        }
        if (is_tool) {
          absl::StrAppend(&out, kOutputsEnd, *m.content, kEos);
          is_tool = false;
        } else {
          absl::StrAppend(&out, kAssistant,
                          tmpl.strip_think ? AfterLastThinkEnd(*m.content) : *m.content, kEos);
        }
        break;
      }
    }
  }
  if (is_tool) out += kOutputsEnd;
  *emitted_generation_prompt = options.add_generation_prompt && !is_tool;
  if (*emitted_generation_prompt) out += tmpl.generation_prompt;
  return out;
}

std::string RenderV2(const KnownTemplate& tmpl, const std::vector<ChatMessage>& messages,
                     const ChatTemplateOptions& options, bool* emitted_generation_prompt) {
  std::string out = options.bos_token;
  for (const ChatMessage& m : messages) {
    switch (m.role) {
      case ChatRole::kUser:
        absl::StrAppend(&out, "User: ", *m.content, "\n\n");
        break;
      case ChatRole::kAssistant:
        absl::StrAppend(&out, "Assistant: ", *m.content, options.eos_token);
        break;
      case ChatRole::kSystem:
        absl::StrAppend(&out, *m.content, "\n\n");
        break;
      case ChatRole::kTool:
        break;  // the template has no tool role
    }
  }
  *emitted_generation_prompt = options.add_generation_prompt;
  if (*emitted_generation_prompt) out += tmpl.generation_prompt;
  return out;
}

}  // namespace

std::string CanonicalTemplateText(absl::string_view template_text) {
  std::vector<Segment> segments = SplitTemplate(template_text);
  std::string out;
  for (size_t i = 0; i < segments.size(); ++i) {
    const Segment& s = segments[i];
    if (s.kind == SegmentKind::kComment) continue;
    if (s.kind != SegmentKind::kText) {
      out += s.kind == SegmentKind::kExpression ? "{{" : "{%";
      out += CanonicalTagBody(s.body);
      out += s.kind == SegmentKind::kExpression ? "}}" : "%}";
      continue;
    }
    absl::string_view text = s.body;
    const Segment* prev = i > 0 ? &segments[i - 1] : nullptr;
    const Segment* next = i + 1 < segments.size() ? &segments[i + 1] : nullptr;
    if (prev != nullptr && prev->trim_after) {
      while (!text.empty() && IsSpace(text.front())) text.remove_prefix(1);
    } else if (prev != nullptr && IsBlock(*prev)) {  // trim_blocks
      if (absl::StartsWith(text, "\r\n")) {
        text.remove_prefix(2);
      } else if (absl::StartsWith(text, "\n")) {
        text.remove_prefix(1);
      }
    }
    if (next != nullptr && next->trim_before) {
      while (!text.empty() && IsSpace(text.back())) text.remove_suffix(1);
    } else if (next != nullptr && IsBlock(*next)) {  // lstrip_blocks
      size_t cut = text.size();
      while (cut > 0 && (text[cut - 1] == ' ' || text[cut - 1] == '\t')) --cut;
      if ((cut == 0 && prev == nullptr) || (cut > 0 && text[cut - 1] == '\n')) {
        text = text.substr(0, cut);
      }
    }
    out.append(text.data(), text.size());
  }
  return out;
}

std::string ChatTemplateFingerprint(absl::string_view template_text) {
  const std::string canonical = CanonicalTemplateText(template_text);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  MOEFLOW_CHECK(
      EVP_Digest(canonical.data(), canonical.size(), digest, &length, EVP_sha256(), nullptr) == 1);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    char byte[3];
    std::snprintf(byte, sizeof(byte), "%02x", digest[i]);
    hex += byte;
  }
  return hex;
}

std::vector<std::string> KnownChatTemplates() {
  std::vector<std::string> names;
  for (const KnownTemplate& known : kKnownTemplates) names.emplace_back(known.name);
  return names;
}

absl::StatusOr<std::string> IdentifyChatTemplate(absl::string_view template_text) {
  const std::string fingerprint = ChatTemplateFingerprint(template_text);
  const KnownTemplate* known = FindByFingerprint(fingerprint);
  if (known == nullptr) {
    return absl::UnimplementedError(
        absl::StrCat("chat template not recognized (", template_text.size(), " bytes, sha256 ",
                     fingerprint, "); known: ", absl::StrJoin(KnownChatTemplates(), ", ")));
  }
  return std::string(known->name);
}

absl::StatusOr<RenderedPrompt> RenderChat(absl::string_view template_text,
                                          const std::vector<ChatMessage>& messages,
                                          const ChatTemplateOptions& options) {
  RenderedPrompt result;
  const std::string fingerprint = ChatTemplateFingerprint(template_text);
  const KnownTemplate* tmpl = FindByFingerprint(fingerprint);
  if (tmpl == nullptr) {
    const std::string why = template_text.empty() ? std::string("no chat template")
                                                  : absl::StrCat("template not recognized: sha256 ",
                                                                 fingerprint.substr(0, 16));
    if (options.fallback_template.empty()) {
      return absl::UnimplementedError(
          absl::StrCat("chat template: ", why, " (", template_text.size(),
                       " bytes); known: ", absl::StrJoin(KnownChatTemplates(), ", "),
                       "; allow a fallback template to render anyway"));
    }
    tmpl = FindByName(options.fallback_template);
    if (tmpl == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("fallback_template: unknown template \"", options.fallback_template,
                       "\"; known: ", absl::StrJoin(KnownChatTemplates(), ", ")));
    }
    result.fallback_used = absl::StrCat(tmpl->name, " (", why, ")");
  }
  std::vector<ChatMessage> polyfilled;
  if (options.polyfill_tool_messages) polyfilled = PolyfillToolMessages(messages, tmpl->name);
  const std::vector<ChatMessage>& render = options.polyfill_tool_messages ? polyfilled : messages;
  MOEFLOW_RETURN_IF_ERROR(CheckRenderable(render, tmpl->style));
  result.template_name = tmpl->name;
  bool emitted_generation_prompt = false;
  result.text = tmpl->style == Style::kV2
                    ? RenderV2(*tmpl, render, options, &emitted_generation_prompt)
                    : RenderDeepSeek(*tmpl, render, options, &emitted_generation_prompt);
  if (emitted_generation_prompt && options.force_think &&
      !absl::EndsWith(result.text, kThinkOpen)) {
    result.text += kThinkOpen;
  }
  result.starts_with_bos = !options.bos_token.empty();
  result.opens_think = emitted_generation_prompt && absl::EndsWith(result.text, kThinkOpen);
  return result;
}

}  // namespace moeflow::chat
