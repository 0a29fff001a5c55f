#include "cli/http_api.h"

#include <openssl/evp.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <optional>
#include <utility>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "auth/bearer_auth.h"
#include "model/gguf.h"
#include "model/gguf_split.h"
#include "model/model_generator.h"
#include "server/ollama_models.h"

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
ABSL_FLAG(bool, allow_unauthenticated, false,
          "serve, launch: serve the HTTP API on a non-loopback address without --api_key (a "
          "trusted network only: anyone who reaches it can use the model)");
ABSL_FLAG(int32_t, max_connections, 1024,
          "serve, launch: open HTTP connections at most; at the limit a new connection closes "
          "the idle one quiet longest, and is refused only when every one has a response in "
          "flight");
ABSL_FLAG(int64_t, idle_timeout_s, 60,
          "serve, launch: an HTTP connection idle this long (between keep-alive requests, or "
          "before its first byte) is closed, seconds");
ABSL_FLAG(int64_t, request_timeout_s, 30,
          "serve, launch: a request's head and body must arrive within this many seconds of "
          "its first byte (else 408)");
ABSL_FLAG(int64_t, shutdown_grace_s, 30,
          "serve, launch: on SIGTERM/SIGINT, seconds running requests may take to finish "
          "(new ones get 503, /health says draining) before they are cancelled; a second "
          "signal cancels them at once");

namespace moeflow {

absl::Status CheckHttpApiFlags(const std::string& host, absl::string_view what) {
  if (absl::GetFlag(FLAGS_max_body_bytes) < 1) {
    return absl::InvalidArgumentError("--max-body-bytes must be >= 1");
  }
  if (absl::GetFlag(FLAGS_http_workers) < 1) {
    return absl::InvalidArgumentError("--http-workers must be >= 1");
  }
  if (absl::GetFlag(FLAGS_max_connections) < 1) {
    return absl::InvalidArgumentError("--max-connections must be >= 1");
  }
  if (absl::GetFlag(FLAGS_idle_timeout_s) < 1) {
    return absl::InvalidArgumentError("--idle-timeout-s must be >= 1");
  }
  if (absl::GetFlag(FLAGS_request_timeout_s) < 1) {
    return absl::InvalidArgumentError("--request-timeout-s must be >= 1");
  }
  if (absl::GetFlag(FLAGS_shutdown_grace_s) < 0) {
    return absl::InvalidArgumentError("--shutdown-grace-s must be >= 0");
  }
  const std::string host_port =
      absl::StrContains(host, ':') ? absl::StrCat("[", host, "]:0") : absl::StrCat(host, ":0");
  if (!dataflow::IsLoopbackAddress(host_port) && absl::GetFlag(FLAGS_api_key).empty() &&
      !absl::GetFlag(FLAGS_allow_unauthenticated)) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", host,
        " is not a loopback address: give --api-key so that only holders of the key can use "
        "the HTTP API (or --allow-unauthenticated on a trusted network)"));
  }
  return absl::OkStatus();
}

int64_t ShutdownGraceSeconds() { return absl::GetFlag(FLAGS_shutdown_grace_s); }

namespace {

// What Ollama's /api/tags, /api/show and /api/ps say about the model file:
// read from its GGUF header (metadata and tensor directory; the weights are
// not touched). A file that does not open leaves the card to the defaults.
server::OllamaModelCard OllamaCard(const std::string& path) {
  server::OllamaModelCard card;
  absl::StatusOr<std::unique_ptr<GgufFile>> file = GgufFile::Open(path);
  if (!file.ok()) return card;
  const GgufFile& f = **file;
  card.size_bytes = static_cast<int64_t>(f.file_size());
  card.family = f.GetString("general.architecture").value_or("deepseek2");
  int64_t parameters = 0;
  for (const GgufTensorInfo& t : f.tensors()) parameters += t.n_elements;
  card.parameter_size = server::ParameterSizeText(parameters);
  const int64_t file_type = f.GetIntOr("general.file_type", -1).value_or(-1);
  for (const std::string& name : LlamaFileTypeNames()) {
    absl::StatusOr<LlamaFileType> type = ParseLlamaFileType(name);
    if (type.ok() && static_cast<int64_t>(*type) == file_type) {
      card.quantization_level = LlamaFileTypeName(*type);
    }
  }
  for (const GgufKeyValue& kv : f.metadata()) {
    if (absl::StartsWith(kv.key, "tokenizer.")) continue;  // vocabularies: MBs
    const GgufValue& v = kv.value;
    if (v.type() == GgufType::kString) {
      card.model_info[kv.key] = v.as_string();
    } else if (v.type() == GgufType::kBool) {
      card.model_info[kv.key] = v.as_bool();
    } else if (v.is_integer()) {
      int64_t i = 0;
      if (v.ToInt64(&i)) card.model_info[kv.key] = i;
    } else if (v.is_float()) {
      card.model_info[kv.key] = v.as_float();
    }
  }
  card.model_info["general.parameter_count"] = parameters;
  // The digest: SHA-256 of the first file's header bytes and the model's size.
  std::ifstream in(f.path(), std::ios::binary);
  std::string header(static_cast<size_t>(f.data_offset()), '\0');
  in.read(header.data(), static_cast<std::streamsize>(header.size()));
  header += std::to_string(f.file_size());
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (in && EVP_Digest(header.data(), header.size(), digest, &length, EVP_sha256(), nullptr) == 1) {
    for (unsigned int i = 0; i < length; ++i)
      absl::StrAppendFormat(&card.digest, "%02x", digest[i]);
  }
  struct stat st {};
  if (stat(f.path().c_str(), &st) == 0) {
    card.modified_at =
        absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromTimeT(st.st_mtime), absl::UTCTimeZone());
  }
  return card;
}

// The model id clients name by default: the file name without .gguf; for
// a shard of a split model (PREFIX-00002-of-00009.gguf, gguf_split.h) the
// split's PREFIX, whichever shard was given.
std::string DefaultModelName(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  constexpr size_t kSuffix = sizeof("-00001-of-00009.gguf") - 1;
  int no = 0, count = 0;
  if (name.size() > kSuffix && absl::SimpleAtoi(name.substr(name.size() - kSuffix + 1, 5), &no) &&
      absl::SimpleAtoi(name.substr(name.size() - 10, 5), &count) && no >= 1 && no <= count) {
    if (std::optional<std::string> prefix = GgufSplitPrefix(name, no - 1, count)) return *prefix;
  }
  if (absl::EndsWith(name, ".gguf")) name.resize(name.size() - 5);
  return name;
}

}  // namespace

bool DrainForShutdown(HttpApi& api, server::GenerationBackend& backend, const sigset_t& signals,
                      const std::function<void(const std::string&)>& log) {
  const int64_t grace_s = ShutdownGraceSeconds();
  api.draining->store(true);
  api.http->StopAccepting();
  backend.StopAccepting("the server is shutting down");
  log(absl::StrCat("draining: new requests get 503; ", backend.pending(),
                   " running or queued may finish within ", grace_s, " s"));
  const absl::Time deadline = absl::Now() + absl::Seconds(grace_s);
  while (backend.pending() > 0) {
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      log(absl::StrCat("grace period over: cancelling ", backend.pending(), " requests"));
      return false;
    }
    const timespec wait = absl::ToTimespec(std::min(left, absl::Milliseconds(100)));
    if (sigtimedwait(&signals, nullptr, &wait) > 0) {
      log(absl::StrCat("second signal: cancelling ", backend.pending(), " requests"));
      return false;
    }
  }
  log("every request finished");
  return true;
}

absl::StatusOr<HttpApi> StartHttpApi(const HttpApiConfig& config, const BpeTokenizer* tokenizer,
                                     server::GenerationBackend* backend,
                                     server::ServerMetrics* metrics) {
  server::ApiOptions api_options;
  api_options.model_name = absl::GetFlag(FLAGS_model_name);
  if (api_options.model_name.empty()) api_options.model_name = DefaultModelName(config.model_path);
  api_options.api_key = absl::GetFlag(FLAGS_api_key);
  api_options.chat_template = config.chat_template;
  api_options.ollama = OllamaCard(config.model_path);
  struct stat st {};
  if (stat(config.model_path.c_str(), &st) == 0) api_options.model_file_bytes = st.st_size;
  HttpApi result;
  result.model_name = api_options.model_name;
  result.draining = std::make_shared<std::atomic<bool>>(false);
  // /health: draining once a shutdown began, else what the caller reports.
  api_options.health = [draining = result.draining, health = config.health]() -> std::string {
    if (draining->load()) return "draining";
    return health ? health() : "";
  };
  result.api = std::make_unique<server::OpenAiApi>(api_options, tokenizer, backend, metrics);

  server::HttpServerOptions http_options;
  http_options.host = config.host;
  http_options.port = config.port;
  http_options.worker_threads = absl::GetFlag(FLAGS_http_workers);
  http_options.limits.max_body_bytes = absl::GetFlag(FLAGS_max_body_bytes);
  http_options.max_connections = absl::GetFlag(FLAGS_max_connections);
  http_options.idle_timeout_ms = absl::GetFlag(FLAGS_idle_timeout_s) * 1000;
  http_options.request_timeout_ms = absl::GetFlag(FLAGS_request_timeout_s) * 1000;
  server::OpenAiApi* api = result.api.get();
  result.http = std::make_unique<server::HttpServer>(
      http_options,
      [api](const server::HttpRequest& request, std::shared_ptr<server::HttpResponder> responder) {
        api->Handle(request, std::move(responder));
      });
  const std::string cors = absl::GetFlag(FLAGS_cors_origin);
  if (!cors.empty()) result.http->SetExtraHeaders({{"Access-Control-Allow-Origin", cors}});
  // Room for max_connections sockets (the soft limit is often 1024).
  rlimit files{};
  if (getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    setrlimit(RLIMIT_NOFILE, &files);
  }
  if (absl::Status s = result.http->Start(); !s.ok()) return s;
  return result;
}

}  // namespace moeflow
