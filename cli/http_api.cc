#include "cli/http_api.h"

#include <sys/stat.h>

#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, api_key, "",
          "serve, launch: require \"Authorization: Bearer KEY\" on every HTTP endpoint but "
          "/health (empty: no key)");
ABSL_FLAG(int64_t, max_body_bytes, 4 * 1024 * 1024,
          "serve, launch: largest HTTP request body accepted, bytes (larger: 413)");
ABSL_FLAG(std::string, cors_origin, "",
          "serve, launch: send Access-Control-Allow-Origin with this value (empty: CORS off)");
ABSL_FLAG(int32_t, http_workers, 2, "serve, launch: threads that parse and validate requests");
ABSL_FLAG(std::string, model_name, "",
          "serve, launch: the model id HTTP clients name (empty: the file name without .gguf)");

namespace moeflow {

absl::Status CheckHttpApiFlags() {
  if (absl::GetFlag(FLAGS_max_body_bytes) < 1) {
    return absl::InvalidArgumentError("--max-body-bytes must be >= 1");
  }
  if (absl::GetFlag(FLAGS_http_workers) < 1) {
    return absl::InvalidArgumentError("--http-workers must be >= 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<HttpApi> StartHttpApi(const HttpApiConfig& config, const BpeTokenizer* tokenizer,
                                     server::GenerationBackend* backend,
                                     server::ServerMetrics* metrics) {
  if (absl::Status s = CheckHttpApiFlags(); !s.ok()) return s;
  server::ApiOptions api_options;
  api_options.model_name = absl::GetFlag(FLAGS_model_name);
  if (api_options.model_name.empty()) {
    std::string name = config.model_path.substr(config.model_path.find_last_of('/') + 1);
    if (absl::EndsWith(name, ".gguf")) name.resize(name.size() - 5);
    api_options.model_name = name;
  }
  api_options.api_key = absl::GetFlag(FLAGS_api_key);
  api_options.chat_template = config.chat_template;
  struct stat st {};
  if (stat(config.model_path.c_str(), &st) == 0) api_options.model_file_bytes = st.st_size;
  HttpApi result;
  result.model_name = api_options.model_name;
  result.api = std::make_unique<server::OpenAiApi>(api_options, tokenizer, backend, metrics);

  server::HttpServerOptions http_options;
  http_options.host = config.host;
  http_options.port = config.port;
  http_options.worker_threads = absl::GetFlag(FLAGS_http_workers);
  http_options.limits.max_body_bytes = absl::GetFlag(FLAGS_max_body_bytes);
  server::OpenAiApi* api = result.api.get();
  result.http = std::make_unique<server::HttpServer>(
      http_options, [api](const server::HttpRequest& request,
                          std::shared_ptr<server::HttpResponder> responder) {
        api->Handle(request, std::move(responder));
      });
  const std::string cors = absl::GetFlag(FLAGS_cors_origin);
  if (!cors.empty()) result.http->SetExtraHeaders({{"Access-Control-Allow-Origin", cors}});
  if (absl::Status s = result.http->Start(); !s.ok()) return s;
  return result;
}

}  // namespace moeflow
