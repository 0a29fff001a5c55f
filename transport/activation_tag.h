// UCX tag of one activation message: (step, layer, kind, source) packed into
// the 64-bit tag that ucp_tag_send_nbx / ucp_tag_recv_nbx match on.
//
// Every receive matches the full tag, so a message of layer 3 can never land
// in a receive posted for layer 4, nor step 9's in step 8's, nor the router's
// output in the expert-output buffer. Tag matching is per UCX worker, not per
// endpoint: when one process receives from several peers with the same
// (step, layer, kind) (the coordinator collecting expert outputs from two
// NUMA workers), `source` tells the senders apart.
//
// Layout (bit 63 first):  step:32 | layer:16 | kind:8 | source:8
//
// Thread-safe (plain values). No failure modes: every field value encodes.
#ifndef MOEFLOW_TRANSPORT_ACTIVATION_TAG_H_
#define MOEFLOW_TRANSPORT_ACTIVATION_TAG_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace moeflow::transport {

// What a message carries; one byte of the tag.
enum class ActivationKind : uint8_t {
  // Hidden states (residual stream rows) for a layer's next stage.
  kHidden = 1,
  // Router output: (token, expert, weight) triples for the expert workers.
  kRouting = 2,
  // Weighted expert outputs returned to the coordinator.
  kExpertOutput = 3,
  // Small in-band control messages (end of stream, acknowledgements).
  kControl = 4,
};

struct ActivationTag {
  // Scheduler step (one batch through all layers); wraps after 2^32 steps,
  // long after any message of an old step could still be in flight.
  uint32_t step = 0;
  uint16_t layer = 0;
  ActivationKind kind = ActivationKind::kHidden;
  // Index of the sending process in the deployment (coordinator 0, then the
  // workers in topology order).
  uint8_t source = 0;

  uint64_t Encode() const {
    return (uint64_t{step} << 32) | (uint64_t{layer} << 16) |
           (uint64_t{static_cast<uint8_t>(kind)} << 8) | uint64_t{source};
  }
  static ActivationTag Decode(uint64_t tag) {
    return ActivationTag{static_cast<uint32_t>(tag >> 32), static_cast<uint16_t>(tag >> 16),
                         static_cast<ActivationKind>(static_cast<uint8_t>(tag >> 8)),
                         static_cast<uint8_t>(tag)};
  }
  std::string ToString() const {
    return absl::StrCat("(step ", step, ", layer ", layer, ", kind ", static_cast<int>(kind),
                        ", source ", source, ")");
  }
  friend bool operator==(const ActivationTag& a, const ActivationTag& b) {
    return a.Encode() == b.Encode();
  }
};

// Receives match every bit of the tag.
inline constexpr uint64_t kActivationTagMaskAll = ~uint64_t{0};

}  // namespace moeflow::transport

#endif  // MOEFLOW_TRANSPORT_ACTIVATION_TAG_H_
