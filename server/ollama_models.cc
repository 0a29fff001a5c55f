#include "server/ollama_models.h"

#include "absl/strings/str_format.h"

namespace moeflow::server {
namespace {

json Details(const OllamaModelCard& card) {
  return {{"parent_model", ""},
          {"format", "gguf"},
          {"family", card.family},
          {"families", json::array({card.family})},
          {"parameter_size", card.parameter_size},
          {"quantization_level", card.quantization_level}};
}

// Whether a name names the served model (Ollama adds ":latest" to bare names).
bool IsServed(const OllamaModelCard& card, const std::string& name) {
  return name == card.name || name == card.name + ":latest";
}

}  // namespace

std::string ParameterSizeText(int64_t parameters) {
  if (parameters >= 1000000000) return absl::StrFormat("%.1fB", parameters / 1e9);
  if (parameters >= 1000000) return absl::StrFormat("%.0fM", parameters / 1e6);
  return absl::StrFormat("%d", parameters);
}

json OllamaTagsJson(const OllamaModelCard& card) {
  const json model = {
      {"name", card.name},       {"model", card.name},    {"modified_at", card.modified_at},
      {"size", card.size_bytes}, {"digest", card.digest}, {"details", Details(card)}};
  return {{"models", json::array({model})}};
}

json OllamaPsJson(const OllamaModelCard& card) {
  // Loaded for as long as the server runs: no expiry (Ollama's far future).
  const json model = {{"name", card.name},        {"model", card.name},
                      {"size", card.size_bytes},  {"digest", card.digest},
                      {"details", Details(card)}, {"expires_at", "2318-01-01T00:00:00Z"},
                      {"size_vram", 0},           {"context_length", card.context_length}};
  return {{"models", json::array({model})}};
}

json OllamaShowJson(const OllamaModelCard& card, const std::string& body, int* status) {
  const json request = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (request.is_discarded() || !request.is_object()) {
    *status = 400;
    return {{"error", "the body must be a JSON object with \"model\""}};
  }
  // "model" (current) or "name" (older clients).
  std::string name;
  for (const char* key : {"model", "name"}) {
    auto it = request.find(key);
    if (it != request.end() && it->is_string()) {
      name = it->get<std::string>();
      break;
    }
  }
  if (name.empty()) {
    *status = 400;
    return {{"error", "model is required"}};
  }
  if (!IsServed(card, name)) {
    *status = 404;
    return {{"error", absl::StrFormat("model '%s' not found", name)}};
  }
  *status = 200;
  json model_info = card.model_info;
  // Ollama's capabilities: every model completes; the DeepSeek V3/R1 tool
  // format is handled by the server (server/README.md, Tools).
  json capabilities = json::array({"completion", "tools"});
  if (card.chat_template.find("think") != std::string::npos) capabilities.push_back("thinking");
  return {{"license", ""},
          {"modelfile", absl::StrFormat("# served by moeflow\nFROM %s\n", card.name)},
          {"parameters", absl::StrFormat("num_ctx %d", card.context_length)},
          {"template", card.chat_template},
          {"details", Details(card)},
          {"model_info", model_info},
          {"capabilities", capabilities},
          {"modified_at", card.modified_at}};
}

}  // namespace moeflow::server
