#include "dataflow/wire.h"

#include <algorithm>

#include "base/check.h"

namespace moeflow::dataflow {

void WireWriter::Advance(size_t bytes) {
  MOEFLOW_CHECK(size_ + bytes <= buffer_.size());
  size_ += bytes;
}

absl::Status WireReader::Done() const {
  if (offset_ == payload_.size()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what_, ": payload of ", payload_.size(), " bytes, the sections take ", offset_));
}

absl::StatusOr<LayerRequest> ParseLayerRequest(const RequestHeader& header,
                                               absl::Span<const uint8_t> payload, int64_t hidden) {
  WireReader reader(payload, "kLayer request");
  LayerRequest r;
  const size_t n = static_cast<size_t>(std::max(0, header.n_tokens));
  if ((header.flags & kRoutedSums) != 0) {
    auto sums = reader.Take<float>(n * static_cast<size_t>(hidden), "routed sums");
    if (!sums.ok()) return sums.status();
    r.routed_sums = *sums;
  }
  if ((header.flags & kStepStart) != 0) {
    if (header.n_segments < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("kLayer request: a step start with ", header.n_segments, " segments"));
    }
    auto segments = reader.Take<SegmentWire>(static_cast<size_t>(header.n_segments), "segments");
    if (!segments.ok()) return segments.status();
    r.segments = *segments;
    int64_t pages = 0, tokens = 0;
    for (const SegmentWire& s : r.segments) {
      if (s.n_pages < 0 || s.n_tokens < 1) {
        return absl::InvalidArgumentError(absl::StrCat("kLayer request: segment of sequence ",
                                                       s.sequence, " has ", s.n_tokens,
                                                       " tokens and ", s.n_pages, " pages"));
      }
      pages += s.n_pages;
      tokens += s.n_tokens;
    }
    if (tokens != header.n_tokens) {
      return absl::InvalidArgumentError(absl::StrCat("kLayer request: the segments hold ", tokens,
                                                     " tokens, the header says ", header.n_tokens));
    }
    auto page_ids = reader.Take<int32_t>(static_cast<size_t>(pages), "pages");
    if (!page_ids.ok()) return page_ids.status();
    r.pages = *page_ids;
    auto ids = reader.Take<int32_t>(n, "tokens");
    if (!ids.ok()) return ids.status();
    r.tokens = *ids;
  }
  if (absl::Status s = reader.Done(); !s.ok()) return s;
  return r;
}

absl::StatusOr<absl::Span<const float>> ParseOutputRequest(const RequestHeader& header,
                                                           absl::Span<const uint8_t> payload,
                                                           int64_t hidden) {
  WireReader reader(payload, "kOutput request");
  absl::Span<const float> sums;
  if ((header.flags & kRoutedSums) != 0) {
    auto taken = reader.Take<float>(
        static_cast<size_t>(std::max(0, header.n_tokens)) * static_cast<size_t>(hidden),
        "routed sums");
    if (!taken.ok()) return taken.status();
    sums = *taken;
  }
  if (absl::Status s = reader.Done(); !s.ok()) return s;
  return sums;
}

size_t RouterReplyBytes(int64_t n, int64_t hidden, int64_t k) {
  return SectionBytes<float>(static_cast<size_t>(n * hidden)) +
         SectionBytes<int32_t>(static_cast<size_t>(n * k)) +
         SectionBytes<float>(static_cast<size_t>(n * k));
}

absl::StatusOr<RouterReply> ParseRouterReply(absl::Span<const uint8_t> payload, int64_t n,
                                             int64_t hidden, int64_t k) {
  WireReader reader(payload, "router reply");
  RouterReply r;
  auto x_norm = reader.Take<float>(static_cast<size_t>(n * hidden), "x_norm");
  if (!x_norm.ok()) return x_norm.status();
  auto ids = reader.Take<int32_t>(static_cast<size_t>(n * k), "expert ids");
  if (!ids.ok()) return ids.status();
  auto weights = reader.Take<float>(static_cast<size_t>(n * k), "weights");
  if (!weights.ok()) return weights.status();
  if (absl::Status s = reader.Done(); !s.ok()) return s;
  r.x_norm = *x_norm;
  r.ids = *ids;
  r.weights = *weights;
  return r;
}

absl::StatusOr<ExpertsRequest> ParseExpertsRequest(const RequestHeader& header,
                                                   absl::Span<const uint8_t> payload,
                                                   int64_t hidden) {
  WireReader reader(payload, "kExperts request");
  ExpertsRequest r;
  const size_t rows = static_cast<size_t>(std::max(0, header.n_rows));
  const size_t pairs = static_cast<size_t>(std::max(0, header.n_pairs));
  auto x = reader.Take<float>(rows * static_cast<size_t>(hidden), "rows");
  if (!x.ok()) return x.status();
  auto row_of_pair = reader.Take<int32_t>(pairs, "row_of_pair");
  if (!row_of_pair.ok()) return row_of_pair.status();
  auto expert_of_pair = reader.Take<int32_t>(pairs, "expert_of_pair");
  if (!expert_of_pair.ok()) return expert_of_pair.status();
  r.rows = *x;
  r.row_of_pair = *row_of_pair;
  r.expert_of_pair = *expert_of_pair;
  if ((header.flags & kExpertsCombine) != 0) {
    auto weights = reader.Take<float>(pairs, "weight_of_pair");
    if (!weights.ok()) return weights.status();
    r.weight_of_pair = *weights;
  }
  if (absl::Status s = reader.Done(); !s.ok()) return s;
  return r;
}

size_t MaxLayerRequestBytes(int64_t max_tokens, int64_t max_segments, int64_t max_pages,
                            int64_t hidden) {
  const size_t n = static_cast<size_t>(max_tokens);
  return SectionBytes<float>(n * static_cast<size_t>(hidden)) +
         SectionBytes<SegmentWire>(static_cast<size_t>(max_segments)) +
         SectionBytes<int32_t>(static_cast<size_t>(max_pages)) + SectionBytes<int32_t>(n);
}

size_t MaxExpertsRequestBytes(int64_t max_rows, int64_t max_pairs, int64_t hidden) {
  const size_t pairs = static_cast<size_t>(max_pairs);
  return SectionBytes<float>(static_cast<size_t>(max_rows * hidden)) +
         2 * SectionBytes<int32_t>(pairs) + SectionBytes<float>(pairs);
}

absl::StatusOr<absl::Span<const uint8_t>> CheckReply(absl::Span<const uint8_t> reply,
                                                     const std::string& worker,
                                                     int64_t expected_bytes) {
  ReplyHeader header;
  if (reply.size() < sizeof(header)) {
    return absl::InternalError(absl::StrCat(worker, ": reply of ", reply.size(), " bytes"));
  }
  std::memcpy(&header, reply.data(), sizeof(header));
  if (header.code != 0) {
    const size_t len = std::min<size_t>(static_cast<size_t>(std::max(0, header.message_bytes)),
                                        reply.size() - sizeof(header));
    return absl::Status(
        static_cast<absl::StatusCode>(header.code),
        absl::StrCat(
            worker, ": ",
            std::string(reinterpret_cast<const char*>(reply.data()) + sizeof(header), len)));
  }
  const size_t payload = reply.size() - sizeof(header);
  if (static_cast<size_t>(header.payload_bytes) != payload ||
      (expected_bytes >= 0 && payload != static_cast<size_t>(expected_bytes))) {
    return absl::InternalError(absl::StrCat(worker, ": reply payload of ", header.payload_bytes,
                                            " bytes (", payload, " received), expected ",
                                            expected_bytes));
  }
  return reply.subspan(sizeof(header));
}

size_t WriteErrorReply(const absl::Status& status, absl::Span<uint8_t> out) {
  const std::string message(
      status.message().substr(0, std::min<size_t>(2000, out.size() - sizeof(ReplyHeader))));
  ReplyHeader header;
  header.code = static_cast<int32_t>(status.code());
  header.message_bytes = static_cast<int32_t>(message.size());
  std::memcpy(out.data(), &header, sizeof(header));
  std::memcpy(out.data() + sizeof(header), message.data(), message.size());
  return sizeof(header) + message.size();
}

}  // namespace moeflow::dataflow
