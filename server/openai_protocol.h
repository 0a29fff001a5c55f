// The OpenAI wire protocol of /v1/chat/completions and /v1/completions:
// request bodies into GenerationRequests, generated tokens into
// chat.completion(.chunk) / text_completion bodies and SSE events.
//
// Role in the data flow: OpenAiApi (openai_api.h) routes a POST here; the
// exchange returned is submitted to the scheduler, which calls it back
// (api_exchange.h). Streaming: role first, one chunk per released piece
// (reasoning_content / content; tool calls as one delta.tool_calls chunk at
// the end), finish_reason, usage in a last chunk with empty choices when
// stream_options.include_usage, then "data: [DONE]".
//
// Thread-safety: as ApiExchange. Failure: ParseOpenAiRequest fills `error`
// (400 invalid_json / invalid_type / invalid_value / missing_required_parameter
// / empty_array / context_length_exceeded, 404 model_not_found), naming the
// parameter, and the caller Refuses with it.
#ifndef MOEFLOW_SERVER_OPENAI_PROTOCOL_H_
#define MOEFLOW_SERVER_OPENAI_PROTOCOL_H_

#include <memory>

#include "server/api_exchange.h"

namespace moeflow::server {

// Always returns the exchange (for logging and Refuse); `*ok` says whether
// it can be submitted, else `*error` says why.
std::shared_ptr<ApiExchange> ParseOpenAiRequest(const ApiContext& ctx, const HttpRequest& http,
                                                std::shared_ptr<HttpResponder> responder, bool chat,
                                                bool* ok, ApiError* error);

}  // namespace moeflow::server

#endif  // MOEFLOW_SERVER_OPENAI_PROTOCOL_H_
