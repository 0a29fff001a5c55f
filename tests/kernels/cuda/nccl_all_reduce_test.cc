// NCCL all-reduce over every CUDA device of the machine (1 device: a
// one-rank group, the sum is the buffer itself). Argument checks and the
// expected sums run everywhere; the device part skips, printing why, without
// a GPU.
#include "kernels/cuda/nccl_all_reduce.h"

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

TEST(NcclAllReduceTest, RejectsBadDeviceLists) {
  EXPECT_EQ(NcclAllReduceGroup::Create({}).status().code(), absl::StatusCode::kInvalidArgument);
  auto twice = NcclAllReduceGroup::Create({0, 0});
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(twice.status().message().find("listed twice"), std::string::npos) << twice.status();
}

TEST(NcclAllReduceTest, SumsAcrossAllDevices) {
  constexpr int kMaxDevices = 4;
  const int64_t n = 4096;
  // Each device's buffer, and the sum over the first 1..4 of them.
  std::vector<std::vector<float>> host;
  std::vector<std::vector<double>> sums(kMaxDevices + 1, std::vector<double>(n, 0.0));
  for (int d = 0; d < kMaxDevices; ++d) {
    host.push_back(RandomFloats(n, 10 + d));
    for (int64_t i = 0; i < n; ++i) sums[d + 1][i] = sums[d][i] + host[d][i];
  }
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  int count = 0;
  ASSERT_EQ(cudaGetDeviceCount(&count), cudaSuccess);
  count = std::min(count, kMaxDevices);
  std::vector<int> devices;
  for (int d = 0; d < count; ++d) devices.push_back(d);
  auto group = NcclAllReduceGroup::Create(devices);
  ASSERT_TRUE(group.ok()) << group.status();
  const std::vector<double>& want = sums[count];
  std::vector<float*> buffers;
  std::vector<cudaStream_t> streams;
  for (int d = 0; d < count; ++d) {
    ASSERT_EQ(cudaSetDevice(d), cudaSuccess);
    float* p = nullptr;
    ASSERT_EQ(cudaMalloc(&p, n * 4), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(p, host[d].data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    buffers.push_back(p);
    cudaStream_t s = nullptr;
    ASSERT_EQ(cudaStreamCreate(&s), cudaSuccess);
    streams.push_back(s);
  }
  ASSERT_TRUE((*group)->AllReduceSum(buffers, n, streams).ok());
  for (int d = 0; d < count; ++d) {
    ASSERT_EQ(cudaSetDevice(d), cudaSuccess);
    ASSERT_EQ(cudaStreamSynchronize(streams[d]), cudaSuccess);
    std::vector<float> got(n);
    ASSERT_EQ(cudaMemcpy(got.data(), buffers[d], n * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    for (int64_t i = 0; i < n; ++i) {
      // At most count - 1 f32 additions of values in [-1, 1].
      ASSERT_NEAR(got[i], want[i], count * 2.4e-7) << "device " << d << " value " << i;
    }
    cudaFree(buffers[d]);
    cudaStreamDestroy(streams[d]);
  }
}

}  // namespace
}  // namespace moeflow::cuda
