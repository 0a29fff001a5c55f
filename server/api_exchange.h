// One generation request in flight between the HTTP API and the scheduler,
// and what the two protocols (openai_protocol.h, ollama_protocol.h) share
// to answer it.
//
// Role in the data flow: a protocol parses the request body into an
// ApiExchange subclass holding the GenerationRequest; OpenAiApi submits it
// and routes the scheduler's callbacks here. OnToken / OnDone do what every
// protocol does (collect the text, send the response head once, turn a
// cancellation or an engine error into this protocol's error) and call the
// subclass for its wire shape: the stream head, one event per token, the
// final event or body.
//
//   Parse ─► Begin(n) ─► Submit × n ─► Submitted ─► OnToken* ─► OnDone × n ─►
//      │                      └─► Abandon (queue full)   (Finish | stream error | 499/503)
//      └─► Refuse (bad request)
//
// Several choices (OpenAI's n): one GenerationRequest per choice, copies of
// `request` with seeds seed, seed + 1, ... and one cancel flag; they share
// the prompt's KV through the scheduler's prefix reuse (its whole 16-token
// blocks, computed once by the first choice).
// Their events carry the choice's index; the end (usage, [DONE], the
// non-streamed body) waits for every choice, and the first choice that
// fails ends the exchange with its error and cancels the others.
//
// Thread-safety: parsing and submitting on an HTTP worker thread; OnToken /
// OnDone on the scheduler thread. Callbacks that arrive before
// Submitted() (a choice already running while the next is submitted) are
// held and replayed then, or dropped by Abandon(); the exchange's mutex is
// never held while calling into the backend.
// Failure: every error reaches the client in the protocol's own shape, and
// a started stream still ends as the protocol ends it (OpenAI: the error
// event, then [DONE]; Ollama: an {"error": ...} line). The backend's
// messages (worker names, signals) go to the log, never to the client: an
// UNAVAILABLE generation (a worker lost) is 503 / code
// "backend_unavailable" ("retry"), anything else 500 "internal_error".
#ifndef MOEFLOW_SERVER_API_EXCHANGE_H_
#define MOEFLOW_SERVER_API_EXCHANGE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "chat/chat_message.h"
#include "server/api_json.h"
#include "server/http_server.h"
#include "server/metrics.h"
#include "server/ollama_models.h"
#include "server/scheduler.h"
#include "tokenizer/bpe_tokenizer.h"

namespace moeflow::server {

struct ApiOptions {
  // The model id clients must name ("model"); /v1/models lists it.
  std::string model_name = "moeflow";
  // Ollama's /api/tags details.
  std::string model_family = "deepseek2";
  int64_t model_file_bytes = 0;
  // Empty: no authentication. Else "Authorization: Bearer KEY" is required.
  std::string api_key;
  // The model file's chat template text ("" when it has none) and the known
  // template used when it is missing or not recognized.
  std::string chat_template;
  std::string fallback_template = "deepseek-v3";
  // Force R1's "<think>\n" at the start of the reply.
  bool force_think = false;
  // One line per request on stderr.
  bool log_requests = true;
  // /v1/completions' default max_tokens (OpenAI's is 16); chat requests
  // default to the rest of the context.
  int64_t default_completion_max_tokens = 16;
  // Why the server does not serve now ("draining", "degraded"), "" when it
  // does: /health answers 503 {"status": REASON} with Retry-After, else 200
  // {"status":"ok"}. Called on HTTP threads. Empty function: always ok.
  std::function<std::string()> health;
  // /api/tags, /api/show, /api/ps (name, size and family are filled from the
  // fields above when empty).
  OllamaModelCard ollama;
};

class GrammarCache;  // constrained_output.h

// What an exchange needs from the server; all outlive every exchange.
struct ApiContext {
  const ApiOptions* options = nullptr;
  const BpeTokenizer* tokenizer = nullptr;
  ServerMetrics* metrics = nullptr;  // may be null
  int64_t context_tokens = 0;        // the backend's
  GrammarCache* grammars = nullptr;  // response_format / format
};

// The system message that describes `tools` to the model (the DeepSeek
// templates do not render them; openai_api.h).
std::string ToolsSystemPrompt(const std::vector<chat::ToolDefinition>& tools);

// `messages` through the model's chat template (generation prompt added),
// tokenized. The renderer's errors (a bad role, an unknown template).
struct ChatPrompt {
  std::vector<int32_t> tokens;
  bool opens_think = false;
};
absl::StatusOr<ChatPrompt> TokenizeChat(const ApiContext& ctx,
                                        const std::vector<chat::ChatMessage>& messages,
                                        const std::vector<chat::ToolDefinition>& tools = {});

// The assistant's message as chat clients get it: content (null when only
// tool calls came), reasoning, tool calls; a malformed tool call is content.
struct ChatOutput {
  std::string content;
  bool content_null = false;
  std::string reasoning;
  std::vector<chat::ToolCall> tool_calls;
};
ChatOutput ParseChatOutput(const std::string& text, bool opens_think);

class ApiExchange {
 public:
  ApiExchange(const ApiContext& ctx, std::shared_ptr<HttpResponder> responder, std::string endpoint,
              std::string id);
  virtual ~ApiExchange() = default;

  // The requests to submit, one per choice (the first is `request`); call
  // once, before submitting them.
  std::vector<std::shared_ptr<GenerationRequest>> Begin();
  // Every choice was submitted: replays what arrived meanwhile.
  void Submitted();
  // A choice could not be submitted: cancels those that were, drops their
  // callbacks, and answers with `error`.
  void Abandon(const ApiError& error);
  void OnToken(int choice, const GeneratedToken& token);
  void OnDone(int choice, const GenerationSummary& summary);
  // Answers with `error` (nothing was sent yet) in this protocol's shape; a
  // 503 carries Retry-After.
  void Refuse(const ApiError& error);
  // One line on stderr (options.log_requests) and the request counter.
  void Log(int status, const std::string& note) const;
  const std::shared_ptr<HttpResponder>& responder() const { return responder_; }

  // Set by the parser.
  std::shared_ptr<GenerationRequest> request;
  int n = 1;  // choices
  std::string model;
  bool stream = false;
  bool logprobs = false;  // chat: logprobs; completions: logprobs != null
  int32_t top_logprobs = 0;
  bool opens_think = false;

 protected:
  // One choice's output (scheduler thread).
  struct Choice {
    std::string text;                    // everything released
    std::vector<GeneratedToken> tokens;  // with logprobs, when not streaming
    GenerationSummary summary;           // when done
    bool done = false;
  };

  virtual json ErrorJson(const ApiError& error) const = 0;
  // The stream's head (status, content type) and its first events.
  virtual void StartStream() = 0;
  // One token's event(s); choices_[choice].text already has its text.
  virtual void StreamToken(int choice, const GeneratedToken& token) = 0;
  // An error inside a started stream (`final`: also close the event stream
  // as the protocol does, e.g. OpenAI's [DONE]).
  virtual void StreamError(const ApiError& error, bool final) = 0;
  // Streaming: one choice ended well; its last events.
  virtual void EndChoice(int /*choice*/) {}
  // Every choice ended well: the closing events, or the whole body.
  // `total`: the first choice's summary with every choice's completion
  // tokens.
  virtual void Finish(const GenerationSummary& total) = 0;

  const ApiContext ctx_;
  const std::shared_ptr<HttpResponder> responder_;
  const std::string endpoint_;
  const std::string id_;
  const double start_s_;
  std::vector<Choice> choices_;  // scheduler thread (sized by Begin)
  bool head_sent = false;

 private:
  void HandleToken(int choice, const GeneratedToken& token);
  void HandleDone(int choice, const GenerationSummary& summary);
  // Reports a generation that failed after it was accepted.
  void SendGenerationError(const ApiError& error, bool final);

  absl::Mutex mu_;
  bool submitted_ ABSL_GUARDED_BY(mu_) = false;
  bool abandoned_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::function<void()>> held_ ABSL_GUARDED_BY(mu_);
  bool failed_ = false;  // a choice failed: the others are ignored
  int done_ = 0;
};

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_API_EXCHANGE_H_
