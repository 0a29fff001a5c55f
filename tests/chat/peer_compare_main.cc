// Compares RenderChat() with the peer renderings written by peer_render.js:
//   chat_peer_compare CONVERSATIONS.json PEER.json
// For each (template, conversation): every peer that rendered must equal
// RenderChat() byte for byte, and the template must be recognized (no
// fallback); where no peer rendered (the template itself rejects the input),
// RenderChat() must fail too. Prints the first difference of each mismatch
// with context and a summary; exits 1 on any mismatch.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "chat/chat_message.h"
#include "chat/chat_template.h"
#include "nlohmann/json.hpp"

namespace {

using moeflow::chat::ChatTemplateOptions;
using nlohmann::json;

json ReadJson(const char* file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "%s: cannot open\n", file);
    std::exit(2);
  }
  std::stringstream text;
  text << in.rdbuf();
  json parsed = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (parsed.is_discarded()) {
    std::fprintf(stderr, "%s: not valid JSON\n", file);
    std::exit(2);
  }
  return parsed;
}

// Printable excerpt: newlines and control bytes escaped.
std::string Excerpt(const std::string& s, size_t from, size_t to) {
  std::string out;
  for (size_t i = from; i < std::min(to, s.size()); ++i) {
    const unsigned char c = s[i];
    if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20) {
      out += absl::StrCat("\\x", absl::Hex(c, absl::kZeroPad2));
    } else {
      out += static_cast<char>(c);
    }
  }
  return out;
}

void PrintFirstDifference(const std::string& expected, const std::string& actual) {
  size_t at = 0;
  while (at < expected.size() && at < actual.size() && expected[at] == actual[at]) ++at;
  const size_t from = at > 80 ? at - 80 : 0;
  std::printf("    first difference at byte %zu (peer %zu bytes, moeflow %zu bytes)\n", at,
              expected.size(), actual.size());
  std::printf("    common: ...%s\n", Excerpt(expected, from, at).c_str());
  std::printf("    peer:    %s...\n", Excerpt(expected, at, at + 120).c_str());
  std::printf("    moeflow: %s...\n", Excerpt(actual, at, at + 120).c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CONVERSATIONS.json PEER.json\n", argv[0]);
    return 2;
  }
  const json conversations = ReadJson(argv[1]);
  const json peer = ReadJson(argv[2]);
  std::map<std::string, json> by_name;
  for (const json& c : conversations.at("conversations")) by_name[c.at("name")] = c;

  int identical = 0, both_reject = 0, mismatches = 0, peer_renderings = 0;
  std::map<std::string, int> per_template;
  for (const json& result : peer.at("results")) {
    const std::string template_key = result.at("template");
    const std::string conversation_name = result.at("conversation");
    const json& c = by_name.at(conversation_name);
    const std::string template_text = peer.at("templates").at(template_key);
    const std::string label = absl::StrCat(template_key, " / ", conversation_name);

    absl::StatusOr<std::vector<moeflow::chat::ChatMessage>> messages =
        moeflow::chat::ParseMessages(c.at("messages"));
    ChatTemplateOptions options;
    options.add_generation_prompt = c.value("add_generation_prompt", false);
    if (c.contains("tools")) {
      auto tools = moeflow::chat::ParseToolsJson(c.at("tools"));
      if (!tools.ok()) {
        std::printf("FAIL %s: tools: %s\n", label.c_str(), tools.status().ToString().c_str());
        ++mismatches;
        continue;
      }
      options.tools = *tools;
    }
    absl::StatusOr<moeflow::chat::RenderedPrompt> rendered =
        messages.ok() ? moeflow::chat::RenderChat(template_text, *messages, options)
                      : absl::StatusOr<moeflow::chat::RenderedPrompt>(messages.status());

    bool any_rendered = false;
    bool ok = true;
    for (const auto& [peer_name, outcome] : result.at("peers").items()) {
      if (!outcome.contains("rendered")) continue;
      any_rendered = true;
      ++peer_renderings;
      const std::string expected = outcome.at("rendered");
      if (!rendered.ok()) {
        std::printf("FAIL %s: peer %s rendered, moeflow: %s\n", label.c_str(), peer_name.c_str(),
                    rendered.status().ToString().c_str());
        ok = false;
      } else if (!rendered->fallback_used.empty()) {
        std::printf("FAIL %s: template not recognized: %s\n", label.c_str(),
                    rendered->fallback_used.c_str());
        ok = false;
      } else if (rendered->text != expected) {
        std::printf("FAIL %s: differs from peer %s\n", label.c_str(), peer_name.c_str());
        PrintFirstDifference(expected, rendered->text);
        ok = false;
      }
    }
    if (!any_rendered) {
      if (rendered.ok()) {
        std::printf("FAIL %s: every peer rejected it, moeflow rendered it\n", label.c_str());
        ok = false;
      } else {
        ++both_reject;
      }
    } else if (ok) {
      ++identical;
      ++per_template[template_key];
    }
    if (!ok) ++mismatches;
  }
  std::printf("\n%zu conversations; per template identical:\n", by_name.size());
  for (const auto& [name, count] : per_template) std::printf("  %-32s %d\n", name.c_str(), count);
  std::printf("identical %d, rejected by both %d, mismatches %d (%d peer renderings compared)\n",
              identical, both_reject, mismatches, peer_renderings);
  return mismatches == 0 && identical > 0 ? 0 : 1;
}
