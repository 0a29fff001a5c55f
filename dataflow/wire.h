// The wire format of the per-layer dataflow messages, in one typed place:
// the headers, the sections of each message (written with WireWriter and
// read back with WireReader, so no caller does offset arithmetic) and the
// byte counts the buffers are sized with.
//
// Role in the data flow: the coordinator's layer driver (coordinator/
// layer_driver.h) sends every request (RequestHeader + payload) to a worker
// through a WorkerClient (worker_client.h: UCX, or in process); the worker's
// compute (worker_compute.h) answers one reply (ReplyHeader + payload). Over
// UCX a request is tagged RequestTag(seq) and its reply ReplyTag(seq, source),
// seq counting the requests sent on that channel.
//
//   op, to            request payload (sections in order)          reply payload
//   kLayer, attention [routed sums f32 n×h]   (flag kRoutedSums)   dense layer: nothing
//                     [segments SegmentWire×S, pages i32×P,        MoE layer: the routed
//                      tokens i32×n]           (flag kStepStart)   rows RouterReply
//   kOutput,attention [routed sums f32 n×h]   (flag kRoutedSums)   logits f32 n_rows×vocab
//   kExperts, expert  rows f32 n_rows×h, row_of_pair i32×n_pairs, f32 n_pairs×h unweighted,
//                     expert_of_pair i32×n_pairs,                  or (kExpertsCombine)
//                     [weight_of_pair f32×n_pairs] (kExpertsCombine) f32 n_rows×h sums
//
//   RouterReply: x_norm f32 n×h, expert ids i32 n×k, weights f32 n×k
//
// A step is one batch through every layer: kLayer 0 (kStepStart: the
// segments — sequence, tokens, positions, page table — and the tokens, which
// the attention worker embeds), kLayer 1 .. n_layers-1, then kOutput. The
// residual stream stays on the attention worker: a MoE layer's reply sends
// only the routed rows to the coordinator, which has the expert workers
// compute them and sends their weighted sums back with the next request
// (kRoutedSums), where the attention worker adds them and its shared
// experts' output to the residual.
//
// kExpertsCombine: the one expert worker holding every pair of the step sums
// them itself with the engine's own call (pairs k per row in row order); the
// reply is then k times smaller. kAllLogits (kOutput): logits of every row
// of the step, else of each segment's last row.
//
// A failed request is answered with code != 0 and a message.
// Thread-safety: plain values. Failure: WireReader returns INVALID_ARGUMENT
// naming the message and the section that does not fit the payload.
#ifndef MOEFLOW_DATAFLOW_WIRE_H_
#define MOEFLOW_DATAFLOW_WIRE_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "transport/activation_tag.h"

namespace moeflow::dataflow {

enum class DataflowOp : uint32_t {
  kLayer = 2,
  kOutput = 3,
  kExperts = 4,
};

struct RequestHeader {
  uint32_t op = 0;
  int32_t layer = 0;
  int32_t n_tokens = 0;    // rows of the step (kLayer, kOutput)
  int32_t n_segments = 0;  // kLayer with kStepStart; kOutput: segments of the step
  int32_t k = 0;           // router top-k (kLayer), pairs per row (kExpertsCombine)
  int32_t n_rows = 0;      // kExperts: rows; kOutput: rows of logits
  int32_t n_pairs = 0;     // kExperts
  uint32_t flags = 0;
};
static_assert(sizeof(RequestHeader) == 32, "wire format");

// RequestHeader::flags.
inline constexpr uint32_t kStepStart = 1u;       // kLayer: the step's segments and tokens
inline constexpr uint32_t kRoutedSums = 2u;      // kLayer/kOutput: the pending MoE layer's sums
inline constexpr uint32_t kExpertsCombine = 4u;  // kExperts: reply the weighted sum per row
inline constexpr uint32_t kAllLogits = 8u;       // kOutput: every row's logits

struct ReplyHeader {
  int32_t code = 0;  // absl::StatusCode
  int32_t message_bytes = 0;
  int64_t payload_bytes = 0;
};
static_assert(sizeof(ReplyHeader) == 16, "wire format");

// One sequence's part of a step: n_tokens rows at positions start_pos..,
// whose page table (n_pages ids of the attention worker's KV pages, in
// position order, covering start_pos + n_tokens positions) follows in the
// step's page list.
struct SegmentWire {
  int64_t sequence = 0;  // for messages only
  int32_t n_tokens = 0;
  int32_t start_pos = 0;
  int32_t n_pages = 0;
  int32_t reserved = 0;
};
static_assert(sizeof(SegmentWire) == 24, "wire format");

inline transport::ActivationTag RequestTag(uint32_t seq) {
  return transport::ActivationTag{seq, 0, transport::ActivationKind::kHidden, 0};
}
inline transport::ActivationTag ReplyTag(uint32_t seq, uint8_t source) {
  return transport::ActivationTag{seq, 0, transport::ActivationKind::kExpertOutput, source};
}
// Worker index in the deployment (0-based, < 15) and restart epoch.
inline uint8_t SourceByte(int worker_index, int epoch) {
  return static_cast<uint8_t>(((epoch & 0xF) << 4) | ((worker_index + 1) & 0xF));
}

inline constexpr size_t kSectionAlign = 16;
inline size_t AlignUp(size_t n, size_t a = 64) { return (n + a - 1) / a * a; }

// Bytes of a payload of sections of these many elements (each section
// aligned to kSectionAlign).
template <typename T>
size_t SectionBytes(size_t n) {
  return AlignUp(n * sizeof(T), kSectionAlign);
}

// Appends sections to a payload buffer. The buffer must be kSectionAlign-
// aligned and large enough (CHECKed: the sizes come from the Max*Bytes
// functions below).
class WireWriter {
 public:
  explicit WireWriter(absl::Span<uint8_t> buffer) : buffer_(buffer) {}
  // Room for n elements, to be filled by the caller.
  template <typename T>
  T* Add(size_t n) {
    T* p = reinterpret_cast<T*>(buffer_.data() + size_);
    Advance(SectionBytes<T>(n));
    return p;
  }
  template <typename T>
  void Copy(absl::Span<const T> values) {
    if (!values.empty())
      std::memcpy(Add<T>(values.size()), values.data(), values.size() * sizeof(T));
  }
  size_t size() const { return size_; }

 private:
  void Advance(size_t bytes);
  absl::Span<uint8_t> buffer_;
  size_t size_ = 0;
};

// Reads the sections a WireWriter wrote, in the same order.
class WireReader {
 public:
  // `what` names the message in errors ("kLayer request").
  WireReader(absl::Span<const uint8_t> payload, const char* what)
      : payload_(payload), what_(what) {}
  template <typename T>
  absl::StatusOr<absl::Span<const T>> Take(size_t n, const char* section) {
    const size_t bytes = SectionBytes<T>(n);
    if (reinterpret_cast<uintptr_t>(payload_.data()) % alignof(T) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": payload is not aligned"));
    }
    if (offset_ + bytes > payload_.size()) {
      return absl::InvalidArgumentError(absl::StrCat(what_, ": payload of ", payload_.size(),
                                                     " bytes ends inside section ", section, " (",
                                                     n, " elements at byte ", offset_, ")"));
    }
    const T* p = reinterpret_cast<const T*>(payload_.data() + offset_);
    offset_ += bytes;
    return absl::MakeConstSpan(p, n);
  }
  // INVALID_ARGUMENT when bytes are left over.
  absl::Status Done() const;

 private:
  absl::Span<const uint8_t> payload_;
  const char* what_;
  size_t offset_ = 0;
};

// The sections of a kLayer request.
struct LayerRequest {
  absl::Span<const float> routed_sums;     // [n × hidden] with kRoutedSums
  absl::Span<const SegmentWire> segments;  // with kStepStart
  absl::Span<const int32_t> pages;         // every segment's table, in order
  absl::Span<const int32_t> tokens;        // [n]
};
absl::StatusOr<LayerRequest> ParseLayerRequest(const RequestHeader& header,
                                               absl::Span<const uint8_t> payload, int64_t hidden);
// The kRoutedSums section of a kOutput request (empty without the flag).
absl::StatusOr<absl::Span<const float>> ParseOutputRequest(const RequestHeader& header,
                                                           absl::Span<const uint8_t> payload,
                                                           int64_t hidden);

// The reply of a MoE layer's kLayer request.
struct RouterReply {
  absl::Span<const float> x_norm;   // [n × hidden]
  absl::Span<const int32_t> ids;    // [n × k]
  absl::Span<const float> weights;  // [n × k]
};
absl::StatusOr<RouterReply> ParseRouterReply(absl::Span<const uint8_t> payload, int64_t n,
                                             int64_t hidden, int64_t k);
size_t RouterReplyBytes(int64_t n, int64_t hidden, int64_t k);

// The sections of a kExperts request.
struct ExpertsRequest {
  absl::Span<const float> rows;              // [n_rows × hidden]
  absl::Span<const int32_t> row_of_pair;     // [n_pairs]
  absl::Span<const int32_t> expert_of_pair;  // [n_pairs]
  absl::Span<const float> weight_of_pair;    // [n_pairs] with kExpertsCombine
};
absl::StatusOr<ExpertsRequest> ParseExpertsRequest(const RequestHeader& header,
                                                   absl::Span<const uint8_t> payload,
                                                   int64_t hidden);

// Largest payloads, for the buffers (registered once per channel).
size_t MaxLayerRequestBytes(int64_t max_tokens, int64_t max_segments, int64_t max_pages,
                            int64_t hidden);
size_t MaxExpertsRequestBytes(int64_t max_rows, int64_t max_pairs, int64_t hidden);

// A reply's header check: the worker's error as a status naming `worker`,
// or the payload when it is `expected_bytes` long (any length: -1).
absl::StatusOr<absl::Span<const uint8_t>> CheckReply(absl::Span<const uint8_t> reply,
                                                     const std::string& worker,
                                                     int64_t expected_bytes);
// Writes an error reply (code, message cut at 2000 bytes) into `out`;
// returns its size.
size_t WriteErrorReply(const absl::Status& status, absl::Span<uint8_t> out);

}  // namespace moeflow::dataflow

#endif  // MOEFLOW_DATAFLOW_WIRE_H_
