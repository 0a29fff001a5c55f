// The Ollama wire protocol of /api/chat and /api/generate: request bodies
// (options.temperature / top_k / top_p / min_p / seed / num_predict / stop /
// repeat_penalty ...) into GenerationRequests, generated tokens into NDJSON
// lines (streamed unless "stream": false) ending with a "done": true object
// that carries Ollama's counters and durations; R1's reasoning as
// "thinking", tool calls as message.tool_calls.
//
// Role in the data flow: as openai_protocol.h, for the /api/ paths.
// Thread-safety: as ApiExchange. Failure: ParseOllamaRequest fills `error`
// ({"error": message}: 400 for a bad body or value, 404 for another model);
// an empty /api/generate prompt is answered at once with Ollama's "load"
// reply (`*answered`).
#ifndef MOEFLOW_SERVER_OLLAMA_PROTOCOL_H_
#define MOEFLOW_SERVER_OLLAMA_PROTOCOL_H_

#include <memory>

#include "server/api_exchange.h"

namespace moeflow::server {

// Always returns the exchange; `*ok` says whether to submit it. When not ok
// and `*answered`, the reply went out already; else Refuse with `*error`.
std::shared_ptr<ApiExchange> ParseOllamaRequest(const ApiContext& ctx, const HttpRequest& http,
                                                std::shared_ptr<HttpResponder> responder, bool chat,
                                                bool* ok, bool* answered, ApiError* error);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_OLLAMA_PROTOCOL_H_
