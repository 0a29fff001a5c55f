// The model-listing endpoints of the Ollama API: GET /api/tags (installed
// models), POST /api/show (one model's details and capabilities: many Ollama
// clients call it first, e.g. to see whether the model takes tools), GET
// /api/ps (models loaded in memory). moeflow serves one model, always
// loaded.
//
// Role in the data flow: OpenAiApi routes these paths here with the
// OllamaModelCard the command built from the GGUF at start (cli/http_api.h).
// Thread-safety: pure functions over the card. Failure: /api/show answers
// 400 without a model name and 404 for another model, {"error": message}.
#ifndef MOEFLOW_SERVER_OLLAMA_MODELS_H_
#define MOEFLOW_SERVER_OLLAMA_MODELS_H_

#include <cstdint>
#include <string>

#include "server/api_json.h"
#include "server/http_server.h"

namespace moeflow::server {

// What the Ollama endpoints say about the served model.
struct OllamaModelCard {
  std::string name;  // the model id (ApiOptions::model_name)
  std::string family = "deepseek2";
  int64_t size_bytes = 0;
  // SHA-256 (hex) of the file's header (metadata and tensor directory) and
  // its size: identifies the model file without reading its gigabytes.
  std::string digest;
  std::string parameter_size;      // "15.7B"
  std::string quantization_level;  // "Q4_K_M"
  std::string chat_template;
  std::string modified_at;  // RFC 3339, the file's mtime
  // GGUF metadata as Ollama's model_info ("general.architecture",
  // "deepseek2.context_length", ...): scalars only.
  json model_info = json::object();
  int64_t context_length = 0;  // what a request may use here
};

// "15.7B", "236M": Ollama's parameter_size.
std::string ParameterSizeText(int64_t parameters);

// The three endpoints' bodies. `body`: /api/show's request.
json OllamaTagsJson(const OllamaModelCard& card);
json OllamaPsJson(const OllamaModelCard& card);
// 200 and the details, or `*status` 400 / 404 and {"error": ...}.
json OllamaShowJson(const OllamaModelCard& card, const std::string& body, int* status);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_OLLAMA_MODELS_H_
