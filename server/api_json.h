// What the HTTP API's protocols share: the JSON value type, API errors, the
// typed readers of request fields (with OpenAI-shaped messages naming the
// field), the body parser, ids, seeds and timestamps.
//
// Role in the data flow: openai_protocol.h and ollama_protocol.h parse
// request bodies with these and build their responses with Dump; the router
// (openai_api.h) answers its own errors with them.
// Thread-safety: free functions; RandomHex / RandomSeed use a thread-local
// generator. Failure: the readers return false and fill an ApiError.
#ifndef MOEFLOW_SERVER_API_JSON_H_
#define MOEFLOW_SERVER_API_JSON_H_

#include <cstdint>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "server/http_server.h"

namespace moeflow::server {

using json = nlohmann::json;

// JSON text; invalid UTF-8 the model produced is replaced, never thrown on.
std::string Dump(const json& j);

double NowS();
std::string RandomHex(int n);
uint64_t RandomSeed();
std::string Rfc3339Now();

// An API error: status, OpenAI type/code, the parameter at fault.
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;  // "" → null
  std::string code;   // "" → null
  std::string type = "invalid_request_error";
};

// {"error": {"message", "type", "param", "code"}} (OpenAI's shape).
json OpenAiErrorJson(const ApiError& e);
// {"error": message} (Ollama's shape).
json OllamaErrorJson(const ApiError& e);

HttpHeaders JsonHeaders();

ApiError TypeError(const std::string& param, const std::string& expected, const json& got);
ApiError ValueError(const std::string& param, const std::string& message);

// Typed optional readers: absent or null → keep the default. Return false
// and set *error on a wrong type or value.
bool ReadNumber(const json& body, const char* name, double lo, double hi, double* out,
                ApiError* error);
bool ReadInteger(const json& body, const char* name, int64_t lo, int64_t hi, int64_t* out,
                 bool* present, ApiError* error);
bool ReadBool(const json& body, const char* name, bool* out, ApiError* error);
// A string or up to 16 strings; empty ones are dropped.
bool ReadStop(const json& body, const char* name, std::vector<std::string>* out, ApiError* error);

// Parses the body as a JSON object or sets *error.
bool ParseBody(const HttpRequest& request, json* body, ApiError* error);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_API_JSON_H_
