#include "server/api_json.h"

#include <chrono>
#include <cmath>
#include <ctime>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace moeflow::server {

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double NowS() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string RandomHex(int n) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  std::string out;
  while (static_cast<int>(out.size()) < n) out += absl::StrFormat("%016x", rng());
  return out.substr(0, n);
}

uint64_t RandomSeed() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return rng();
}

std::string Rfc3339Now() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buffer[64];
  std::strftime(buffer, sizeof(buffer), "%Y-%m-%dT%H:%M:%S", &tm);
  const int64_t micros =
      std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() %
      1000000;
  return absl::StrFormat("%s.%06dZ", buffer, micros);
}

json OpenAiErrorJson(const ApiError& e) {
  return {{"error",
           {{"message", e.message},
            {"type", e.type},
            {"param", e.param.empty() ? json(nullptr) : json(e.param)},
            {"code", e.code.empty() ? json(nullptr) : json(e.code)}}}};
}

json OllamaErrorJson(const ApiError& e) { return {{"error", e.message}}; }

HttpHeaders JsonHeaders() { return {{"Content-Type", "application/json"}}; }

namespace {

std::string JsonTypeName(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

}  // namespace

ApiError TypeError(const std::string& param, const std::string& expected, const json& got) {
  return {400,
          absl::StrCat("Invalid type for '", param, "': expected ", expected, ", but got ",
                       JsonTypeName(got), " instead."),
          param, "invalid_type"};
}

ApiError ValueError(const std::string& param, const std::string& message) {
  return {400, absl::StrCat("Invalid value for '", param, "': ", message), param, "invalid_value"};
}

bool ReadNumber(const json& body, const char* name, double lo, double hi, double* out,
                ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number()) {
    *error = TypeError(name, "a number", *it);
    return false;
  }
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi)) {
    *error = ValueError(name, absl::StrCat("must be between ", lo, " and ", hi, ", got ", v));
    return false;
  }
  *out = v;
  return true;
}

bool ReadInteger(const json& body, const char* name, int64_t lo, int64_t hi, int64_t* out,
                 bool* present, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_number_integer() &&
      !(it->is_number_float() && std::floor(it->get<double>()) == it->get<double>())) {
    *error = TypeError(name, "an integer", *it);
    return false;
  }
  const double d = it->get<double>();
  if (!(d >= static_cast<double>(lo) && d <= static_cast<double>(hi))) {
    *error =
        ValueError(name, absl::StrCat("must be between ", lo, " and ", hi, ", got ", Dump(*it)));
    return false;
  }
  *out = it->is_number_unsigned()  ? static_cast<int64_t>(it->get<uint64_t>())
         : it->is_number_integer() ? it->get<int64_t>()
                                   : static_cast<int64_t>(d);
  if (present != nullptr) *present = true;
  return true;
}

bool ReadBool(const json& body, const char* name, bool* out, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (!it->is_boolean()) {
    *error = TypeError(name, "a boolean", *it);
    return false;
  }
  *out = it->get<bool>();
  return true;
}

bool ReadStop(const json& body, const char* name, std::vector<std::string>* out, ApiError* error) {
  auto it = body.find(name);
  if (it == body.end() || it->is_null()) return true;
  if (it->is_string()) {
    if (!it->get<std::string>().empty()) out->push_back(it->get<std::string>());
    return true;
  }
  if (!it->is_array()) {
    *error = TypeError(name, "a string or an array of strings", *it);
    return false;
  }
  if (it->size() > 16) {
    *error = ValueError(name, "at most 16 stop sequences");
    return false;
  }
  for (const json& s : *it) {
    if (!s.is_string()) {
      *error = TypeError(name, "a string or an array of strings", s);
      return false;
    }
    if (!s.get<std::string>().empty()) out->push_back(s.get<std::string>());
  }
  return true;
}

bool ParseBody(const HttpRequest& request, json* body, ApiError* error) {
  *body = json::parse(request.body, nullptr, /*allow_exceptions=*/false);
  if (body->is_discarded()) {
    *error = {400,
              "We could not parse the JSON body of your request. (HINT: This likely means you "
              "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
              "", "invalid_json"};
    return false;
  }
  if (!body->is_object()) {
    *error = {400, "The request body must be a JSON object.", "", "invalid_json"};
    return false;
  }
  return true;
}

}  // namespace moeflow::server
