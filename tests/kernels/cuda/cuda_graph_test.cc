// Decode-step CUDA graphs (kernels/cuda/cuda_graph.h): the first Run per
// batch size captures and runs, later ones replay the graph reading the
// buffers' current contents; an enqueue error is returned and nothing kept.
// The expected sums are computed everywhere; the device part skips, printing
// why, without a CUDA device.
#include "kernels/cuda/cuda_graph.h"

#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/layer_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

TEST(CudaGraphTest, CapturesOncePerBatchSizeAndReplaysWithNewInputs) {
  const int64_t n = 1000;
  std::vector<float> a = RandomFloats(n, 1), b = RandomFloats(n, 2);
  const std::vector<float> a2 = RandomFloats(n, 3);
  std::vector<float> want(n), want2(n);  // the residual add: b + a
  for (int64_t i = 0; i < n; ++i) {
    want[i] = b[i] + a[i];
    want2[i] = b[i] + a2[i];
  }
  ASSERT_NE(want, want2);
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  DeviceBuffer<float> da(a), db(b), dout(n);
  int enqueued = 0;
  auto step = [&]() -> absl::Status {
    ++enqueued;
    return RunResidualAdd({da.get(), db.get(), nullptr, dout.get(), n, stream});
  };
  {
    DecodeGraphCache graphs(stream);
    ASSERT_TRUE(graphs.Run(1, step).ok());
    EXPECT_EQ(dout.Download(), want);
    // New inputs in the same buffers: the replay sees them.
    ASSERT_EQ(cudaMemcpy(da.get(), a2.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_TRUE(graphs.Run(1, step).ok());
    EXPECT_EQ(dout.Download(), want2);
    EXPECT_EQ(enqueued, 1);
    ASSERT_TRUE(graphs.Run(2, step).ok());
    EXPECT_EQ(enqueued, 2);
    EXPECT_EQ(graphs.captured(), 2);
    const absl::Status failed =
        graphs.Run(3, [] { return absl::InvalidArgumentError("bad step"); });
    EXPECT_EQ(failed.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(graphs.captured(), 2);
  }
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace moeflow::cuda
