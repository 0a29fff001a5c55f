// Wire format of the per-layer activation messages between the coordinator
// and its workers (carried by transport::ActivationChannel over UCX).
//
// Role in the data flow: every coordinator -> worker message is one request
// (RequestHeader + payload) tagged RequestTag(seq), where seq counts the
// requests sent on that channel; the worker answers with one or two reply
// parts (ReplyHeader + payload) tagged ReplyTag(seq, part, source). Part 0
// of a gpu_worker kLayer reply carries the router output so the coordinator
// can dispatch experts at once; part 1 (shared experts) follows, overlapping
// the expert workers' compute.
//
//   op         payload in                         reply part 0 (part 1)
//   kEmbed     int32 tokens[n]                    f32 x[n × hidden]
//   kLayer     f32 x[n × hidden]                  dense layer: f32 x_next[n × hidden]
//                                                 MoE layer:   f32 ffn_inp[n × hidden],
//                                                 f32 x_norm[n × hidden], i32 ids[n × k],
//                                                 f32 weights[n × k]  (f32 shared[n × hidden])
//   kOutput    f32 x[n × hidden]                  f32 logits[n × vocab]
//   kExperts   f32 rows[n_rows × hidden],         f32 y[n_pairs × hidden]: the unweighted
//              i32 row_of_pair[n_pairs],          output of each pair's expert (or of this
//              i32 expert_of_pair[n_pairs]        worker's slice of it)
//   kExperts   as above, then                     f32 out[n_rows × hidden]: Σ_j w · y over
//   + flags    f32 weight_of_pair[n_pairs]        each row's k pairs in j order, the
//   kCombine   (n_pairs = n_rows × k, row r's     single-process engine's routed sum
//              pairs at r·k .. r·k + k − 1)       (EngineRoutedExperts), bit for bit
//
// The coordinator asks for kCombine when one expert worker holds every pair
// of the step (one worker; or all of a step's experts on one shard): the
// reply is then k times smaller and the weighted sum runs on the worker.
//
// A failed request is answered on part 0 with code != 0 and a message.
// Thread-safety: plain values. Failure: none here; receivers validate sizes.
#ifndef MOEFLOW_DATAFLOW_WIRE_H_
#define MOEFLOW_DATAFLOW_WIRE_H_

#include <cstddef>
#include <cstdint>

#include "transport/activation_tag.h"

namespace moeflow::dataflow {

enum class DataflowOp : uint32_t {
  kEmbed = 1,
  kLayer = 2,
  kOutput = 3,
  kExperts = 4,
};

struct RequestHeader {
  uint32_t op = 0;
  int32_t layer = 0;
  int32_t n_tokens = 0;  // rows of x (kEmbed/kLayer/kOutput)
  int32_t start_pos = 0;
  int32_t k = 0;  // router top-k (kLayer)
  int32_t n_rows = 0;   // kExperts
  int32_t n_pairs = 0;  // kExperts
  uint32_t flags = 0;   // kExperts: kExpertsCombine
};

// RequestHeader::flags of a kExperts request: reply with the weighted sum per
// row instead of one output per pair (see the table above).
inline constexpr uint32_t kExpertsCombine = 1u;
static_assert(sizeof(RequestHeader) == 32, "wire format");

struct ReplyHeader {
  int32_t code = 0;  // absl::StatusCode
  int32_t message_bytes = 0;
  int64_t payload_bytes = 0;
};
static_assert(sizeof(ReplyHeader) == 16, "wire format");

inline transport::ActivationTag RequestTag(uint32_t seq) {
  return transport::ActivationTag{seq, 0, transport::ActivationKind::kHidden, 0};
}
inline transport::ActivationTag ReplyTag(uint32_t seq, uint16_t part, uint8_t source) {
  return transport::ActivationTag{seq, part, transport::ActivationKind::kExpertOutput, source};
}
// Worker index in the deployment (0-based, < 15) and restart epoch.
inline uint8_t SourceByte(int worker_index, int epoch) {
  return static_cast<uint8_t>(((epoch & 0xF) << 4) | ((worker_index + 1) & 0xF));
}

inline size_t AlignUp(size_t n, size_t a = 64) { return (n + a - 1) / a * a; }

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_WIRE_H_
