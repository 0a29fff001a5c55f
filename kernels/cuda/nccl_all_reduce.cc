#include "kernels/cuda/nccl_all_reduce.h"

#include <nccl.h>

#include <set>

#include "absl/strings/str_cat.h"

namespace moeflow::cuda {
namespace {

absl::Status NcclStatus(ncclResult_t r, absl::string_view what) {
  if (r == ncclSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, " failed: ", ncclGetErrorString(r)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<NcclAllReduceGroup>> NcclAllReduceGroup::Create(
    const std::vector<int>& devices) {
  if (devices.empty() || devices.size() > 8) {
    return absl::InvalidArgumentError(
        absl::StrCat("nccl: ", devices.size(), " devices (need 1..8)"));
  }
  if (std::set<int>(devices.begin(), devices.end()).size() != devices.size()) {
    return absl::InvalidArgumentError("nccl: a device is listed twice");
  }
  std::unique_ptr<NcclAllReduceGroup> g(new NcclAllReduceGroup());
  g->devices_ = devices;
  std::vector<ncclComm_t> comms(devices.size(), nullptr);
  if (absl::Status s = NcclStatus(
          ncclCommInitAll(comms.data(), static_cast<int>(devices.size()), devices.data()),
          "ncclCommInitAll");
      !s.ok()) {
    return s;
  }
  for (ncclComm_t c : comms) g->comms_.push_back(c);
  return g;
}

NcclAllReduceGroup::~NcclAllReduceGroup() {
  for (void* c : comms_) ncclCommDestroy(static_cast<ncclComm_t>(c));
}

absl::Status NcclAllReduceGroup::AllReduceSum(const std::vector<float*>& buffers, int64_t count,
                                              const std::vector<cudaStream_t>& streams) {
  if (buffers.size() != devices_.size() || streams.size() != devices_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("nccl: ", buffers.size(), " buffers and ",
                                                   streams.size(), " streams for ", devices_.size(),
                                                   " ranks"));
  }
  if (count < 0) return absl::InvalidArgumentError(absl::StrCat("nccl: count = ", count));
  if (absl::Status s = NcclStatus(ncclGroupStart(), "ncclGroupStart"); !s.ok()) return s;
  absl::Status first;
  for (size_t i = 0; i < devices_.size(); ++i) {
    const absl::Status s =
        NcclStatus(ncclAllReduce(buffers[i], buffers[i], static_cast<size_t>(count), ncclFloat32,
                                 ncclSum, static_cast<ncclComm_t>(comms_[i]), streams[i]),
                   absl::StrCat("ncclAllReduce (rank ", i, ", device ", devices_[i], ")"));
    if (first.ok()) first = s;
  }
  const absl::Status ended = NcclStatus(ncclGroupEnd(), "ncclGroupEnd");
  return first.ok() ? ended : first;
}

}  // namespace moeflow::cuda
