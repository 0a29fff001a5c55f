// moeflowctl: the remote control of a running `moeflow launch` over its gRPC
// ControlService (proto/control.proto).
//
//   moeflowctl --addr 127.0.0.1:50051 status         exit 0 only when every worker serves
//   moeflowctl generate --prompt TEXT --max_tokens N --temperature 0
//                                                    prints only the generated text
//   moeflowctl drain [--timeout_ms N] | undrain | shutdown | set-experts N | stats
//   status prints each worker's state, restarts, the error keeping it from
//   serving (none once it serves again) and when the latest error was seen
//   moeflowctl logits --tokens 1,2,3 --out X.bin     MFLG logits of the deployment
//   --token T: bearer token; --tls_ca FILE [--tls_server_name N]: TLS to a
//   launcher started with --control_tls_cert / --control_tls_key
//
// Exit codes: 0 ok, 1 the call failed (message on stderr), 2 usage, 3 status:
// not every worker is ready.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/pem_file.h"
#include "model/deepseek2/logits_file.h"
#include "proto/control.grpc.pb.h"

ABSL_FLAG(std::string, addr, "127.0.0.1:50051", "host:port of the coordinator's control service");
ABSL_FLAG(std::string, token, "", "bearer token (when the control service requires one)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM file of the certificate(s) to trust (the launcher's --control_tls_cert or its "
          "CA); given: connect over TLS");
ABSL_FLAG(std::string, tls_server_name, "",
          "with --tls_ca: the name the server's certificate must carry, when it is not the "
          "host of --addr");
ABSL_FLAG(int64_t, timeout_ms, 600000, "deadline of the call");
ABSL_FLAG(std::string, prompt, "", "generate: the prompt text");
ABSL_FLAG(bool, chat, false,
          "generate: send the prompt as one user message, rendered by the coordinator with the "
          "model's chat template");
ABSL_FLAG(int32_t, max_tokens, 64, "generate: most tokens to generate (0: until EOS)");
ABSL_FLAG(double, temperature, 0.0, "generate: sampling temperature (0: greedy)");
ABSL_FLAG(double, top_p, 1.0, "generate: nucleus mass (1: off)");
ABSL_FLAG(int32_t, top_k, 0, "generate: keep the k most likely tokens (0: off)");
ABSL_FLAG(uint64_t, seed, 0, "generate: sampler seed");
ABSL_FLAG(std::string, tokens, "", "logits: comma-separated token ids");
ABSL_FLAG(std::string, out, "", "logits: MFLG output file");
ABSL_FLAG(bool, reset, false, "stats: zero the per-layer counters after reading");

namespace moeflow {
namespace {

constexpr int kOk = 0, kFailed = 1, kUsage = 2, kNotReady = 3;

int Fail(const grpc::Status& s, const char* what) {
  std::fprintf(stderr, "moeflowctl %s: %s: %s\n", what,
               absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())).c_str(),
               s.error_message().c_str());
  return kFailed;
}

void Prepare(grpc::ClientContext& ctx) {
  ctx.set_deadline(
      absl::ToChronoTime(absl::Now() + absl::Milliseconds(absl::GetFlag(FLAGS_timeout_ms))));
  if (!absl::GetFlag(FLAGS_token).empty()) {
    ctx.AddMetadata("authorization", "Bearer " + absl::GetFlag(FLAGS_token));
  }
}

// Insecure channel credentials, or TLS trusting the --tls_ca certificates.
bool ChannelCredentials(std::shared_ptr<grpc::ChannelCredentials>* credentials,
                        grpc::ChannelArguments* args) {
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  if (ca.empty()) {
    *credentials = grpc::InsecureChannelCredentials();
    return true;
  }
  absl::StatusOr<std::string> pem = ReadPemFile("tls_ca", ca);
  if (!pem.ok()) {
    std::fprintf(stderr, "moeflowctl: %s\n", std::string(pem.status().message()).c_str());
    return false;
  }
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = *pem;
  *credentials = grpc::SslCredentials(options);
  if (!absl::GetFlag(FLAGS_tls_server_name).empty()) {
    args->SetSslTargetNameOverride(absl::GetFlag(FLAGS_tls_server_name));
  }
  return true;
}

int Main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "moeflowctl [--addr host:port] status|generate|drain|undrain|shutdown|set-experts "
      "N|stats|logits");
  // Flag names may be written with dashes (--max-tokens), as `moeflow` accepts
  // them; absl spells them with underscores.
  std::vector<std::string> normalized(argv, argv + argc);
  for (size_t i = 1; i < normalized.size(); ++i) {
    std::string& arg = normalized[i];
    if (arg == "--") break;
    if (arg.size() < 3 || arg.compare(0, 2, "--") != 0) continue;
    const size_t end = std::min(arg.find('='), arg.size());
    // Only names made of flag characters: a prompt value like "--a b" stays.
    const bool flag_like = std::all_of(arg.begin() + 2, arg.begin() + end, [](char c) {
      return std::islower(c) || std::isdigit(c) || c == '-' || c == '_';
    });
    if (!flag_like) continue;
    std::replace(arg.begin() + 2, arg.begin() + end, '-', '_');
  }
  std::vector<char*> normalized_argv;
  for (std::string& arg : normalized) normalized_argv.push_back(arg.data());
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(normalized_argv.size()), normalized_argv.data());
  if (positional.size() < 2) {
    std::fprintf(stderr,
                 "usage: moeflowctl [--addr host:port] "
                 "status|generate|drain|undrain|shutdown|set-experts N|stats|logits\n");
    return kUsage;
  }
  const std::string command = positional[1];
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(256 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (!ChannelCredentials(&credentials, &args)) return kUsage;
  auto stub = proto::ControlService::NewStub(
      grpc::CreateCustomChannel(absl::GetFlag(FLAGS_addr), credentials, args));
  grpc::ClientContext ctx;
  Prepare(ctx);
  if (command == "status") {
    proto::StatusResponse r;
    grpc::Status s = stub->Status(&ctx, {}, &r);
    if (!s.ok()) return Fail(s, "status");
    std::printf("coordinator %s  model %s  uptime %.1f s  active %d  queued %d  http %d\n",
                proto::CoordinatorState_Name(r.state()).c_str(), r.model_name().c_str(),
                r.uptime_ms() / 1000.0, r.active_requests(), r.queued_requests(),
                r.http_requests());
    bool ready = r.state() == proto::COORDINATOR_STATE_SERVING;
    for (const proto::WorkerStatus& w : r.workers()) {
      std::string shard;
      if (w.shard().slice_count() > 1) {
        shard = absl::StrCat("slice ", w.shard().slice_index(), "/", w.shard().slice_count());
      } else if (w.shard().expert_ids_size() > 0) {
        shard = absl::StrCat("experts ", w.shard().expert_ids(0), "..",
                             w.shard().expert_ids(w.shard().expert_ids_size() - 1));
      } else {
        shard = w.role() == proto::WORKER_ROLE_CPU_EXPERT ? "all experts" : "non-expert";
      }
      std::string errors;
      if (w.restarts() > 0) absl::StrAppend(&errors, "  restarts ", w.restarts());
      if (w.last_error_unix_ms() > 0) {
        absl::StrAppend(
            &errors, "  last error ",
            absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(w.last_error_unix_ms()),
                             absl::UTCTimeZone()));
      }
      if (!w.last_error().empty()) absl::StrAppend(&errors, "  error: ", w.last_error());
      if (w.last_error().empty() && !w.recovered_error().empty()) {
        absl::StrAppend(&errors, "  recovered from: ", w.recovered_error());
      }
      std::printf("  %-8s %-22s %-12s %-18s health %lld ms ago%s\n", w.worker_name().c_str(),
                  proto::WorkerState_Name(w.state()).c_str(), w.grpc_address().c_str(),
                  shard.c_str(), static_cast<long long>(w.last_health_age_ms()), errors.c_str());
      if (w.state() != proto::WORKER_STATE_SERVING) ready = false;
    }
    return ready ? kOk : kNotReady;
  }
  if (command == "generate") {
    proto::GenerateRequest request;
    if (absl::GetFlag(FLAGS_chat)) {
      proto::ChatMessage* message = request.mutable_chat()->add_messages();
      message->set_role("user");
      message->set_content(absl::GetFlag(FLAGS_prompt));
    } else {
      request.set_prompt(absl::GetFlag(FLAGS_prompt));
    }
    request.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
    request.mutable_sampling()->set_temperature(
        static_cast<float>(absl::GetFlag(FLAGS_temperature)));
    request.mutable_sampling()->set_top_p(static_cast<float>(absl::GetFlag(FLAGS_top_p)));
    request.mutable_sampling()->set_top_k(absl::GetFlag(FLAGS_top_k));
    request.mutable_sampling()->set_seed(absl::GetFlag(FLAGS_seed));
    auto reader = stub->Generate(&ctx, request);
    proto::GenerateResponse r;
    while (reader->Read(&r)) {
      if (r.has_piece()) {
        std::fwrite(r.piece().text().data(), 1, r.piece().text().size(), stdout);
        std::fflush(stdout);
      } else if (r.has_final()) {
        // Decode rate as `moeflow generate` counts it: the completion
        // tokens over the time after the first one (the server's clock).
        const proto::Usage& u = r.final().usage();
        const int64_t decode_ms = u.total_time_ms() - u.time_to_first_token_ms();
        std::fprintf(
            stderr,
            "\nmoeflowctl generate: %s, %d prompt + %d tokens, %lld ms (first token "
            "%lld ms, decode %.1f tok/s)\n",
            proto::FinishReason_Name(r.final().finish_reason()).c_str(), u.prompt_tokens(),
            u.completion_tokens(), static_cast<long long>(u.total_time_ms()),
            static_cast<long long>(u.time_to_first_token_ms()),
            decode_ms > 0 ? 1e3 * u.completion_tokens() / static_cast<double>(decode_ms) : 0.0);
      }
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return Fail(s, "generate");
    std::printf("\n");
    return kOk;
  }
  if (command == "drain") {
    proto::DrainRequest request;
    proto::DrainResponse r;
    grpc::Status s = stub->Drain(&ctx, request, &r);
    if (!s.ok()) return Fail(s, "drain");
    std::printf("drained: %d requests finished, %d cancelled\n", r.requests_finished(),
                r.requests_cancelled());
    return kOk;
  }
  if (command == "undrain") {
    proto::UndrainResponse r;
    grpc::Status s = stub->Undrain(&ctx, proto::UndrainRequest(), &r);
    if (!s.ok()) return Fail(s, "undrain");
    std::printf("accepting requests again: coordinator %s\n",
                proto::CoordinatorState_Name(r.state()).c_str());
    return kOk;
  }
  if (command == "shutdown") {
    proto::CoordinatorShutdownRequest request;
    request.set_stop_workers(true);
    request.set_reason("moeflowctl shutdown");
    proto::CoordinatorShutdownResponse r;
    grpc::Status s = stub->Shutdown(&ctx, request, &r);
    if (!s.ok()) return Fail(s, "shutdown");
    return kOk;
  }
  if (command == "set-experts") {
    int k = 0;
    if (positional.size() != 3 || !absl::SimpleAtoi(positional[2], &k)) {
      std::fprintf(stderr, "usage: moeflowctl set-experts N   (0: the model's top-k)\n");
      return kUsage;
    }
    proto::SetExpertPolicyRequest request;
    request.set_active_experts_per_token(k);
    proto::SetExpertPolicyResponse r;
    grpc::Status s = stub->SetExpertPolicy(&ctx, request, &r);
    if (!s.ok()) return Fail(s, "set-experts");
    std::printf("active experts per token: %d -> %d\n", r.previous_active_experts_per_token(),
                r.active_experts_per_token());
    return kOk;
  }
  if (command == "stats") {
    proto::MetricsRequest request;
    request.set_reset(absl::GetFlag(FLAGS_reset));
    proto::MetricsResponse r;
    grpc::Status s = stub->Metrics(&ctx, request, &r);
    if (!s.ok()) return Fail(s, "stats");
    std::printf("requests %lld (failed %lld)  prompt tokens %lld  completion tokens %lld\n",
                static_cast<long long>(r.requests_total()),
                static_cast<long long>(r.requests_failed()),
                static_cast<long long>(r.prompt_tokens_total()),
                static_cast<long long>(r.completion_tokens_total()));
    std::printf("decode %.2f tok/s  prefill %.2f tok/s  step p50 %lld us  p99 %lld us\n",
                r.decode_tokens_per_second(), r.prefill_tokens_per_second(),
                static_cast<long long>(r.step_time_p50_us()),
                static_cast<long long>(r.step_time_p99_us()));
    if (r.step_time_bucket_count_size() > 0 &&
        r.step_time_bucket_count_size() == r.step_time_bucket_le_us_size()) {
      std::printf("step ms histogram:");
      for (int i = 0; i < r.step_time_bucket_count_size(); ++i) {
        if (r.step_time_bucket_count(i) == 0) continue;
        const int64_t le = r.step_time_bucket_le_us(i);
        if (le == 0) {
          std::printf("  >%lld: %lld",
                      static_cast<long long>(i > 0 ? r.step_time_bucket_le_us(i - 1) / 1000 : 0),
                      static_cast<long long>(r.step_time_bucket_count(i)));
        } else {
          std::printf("  <=%lld: %lld", static_cast<long long>(le / 1000),
                      static_cast<long long>(r.step_time_bucket_count(i)));
        }
      }
      std::printf("\n");
    }
    std::printf("%-12s %5s %8s %14s %14s %12s %12s %10s\n", "worker", "layer", "steps",
                "transport_us", "compute_us", "bytes_sent", "bytes_recv", "rows");
    for (const proto::WorkerLayerMetrics& w : r.workers()) {
      for (const proto::LayerStats& l : w.layers()) {
        std::printf(
            "%-12s %5d %8lld %14lld %14lld %12lld %12lld %10lld\n", w.worker_name().c_str(),
            l.layer(), static_cast<long long>(l.steps()),
            static_cast<long long>(l.transport_time_us()),
            static_cast<long long>(l.compute_time_us()), static_cast<long long>(l.bytes_sent()),
            static_cast<long long>(l.bytes_received()), static_cast<long long>(l.rows_computed()));
      }
    }
    return kOk;
  }
  if (command == "logits") {
    proto::ComputeLogitsRequest request;
    for (absl::string_view piece :
         absl::StrSplit(absl::GetFlag(FLAGS_tokens), ',', absl::SkipWhitespace())) {
      int32_t id = 0;
      if (!absl::SimpleAtoi(piece, &id)) {
        std::fprintf(stderr, "moeflowctl logits: --tokens: '%s' is not an integer\n",
                     std::string(piece).c_str());
        return kUsage;
      }
      request.add_tokens(id);
    }
    if (request.tokens_size() == 0 || absl::GetFlag(FLAGS_out).empty()) {
      std::fprintf(stderr, "moeflowctl logits: --tokens and --out are required\n");
      return kUsage;
    }
    proto::ComputeLogitsResponse r;
    grpc::Status s = stub->ComputeLogits(&ctx, request, &r);
    if (!s.ok()) return Fail(s, "logits");
    LogitsFile file;
    file.tokens.assign(request.tokens().begin(), request.tokens().end());
    file.n_vocab = r.n_vocab();
    file.logits.resize(r.logits().size() / sizeof(float));
    std::memcpy(file.logits.data(), r.logits().data(), file.logits.size() * sizeof(float));
    if (absl::Status w = WriteLogitsFile(absl::GetFlag(FLAGS_out), file); !w.ok()) {
      std::fprintf(stderr, "moeflowctl logits: %s\n", std::string(w.message()).c_str());
      return kFailed;
    }
    return kOk;
  }
  std::fprintf(stderr, "moeflowctl: unknown command '%s'\n", command.c_str());
  return kUsage;
}

}  // namespace
}  // namespace moeflow

int main(int argc, char** argv) { return moeflow::Main(argc, argv); }
