// Decode-step CUDA graphs (kernels/cuda/cuda_graph.h): the first Run per
// batch size captures and runs, later ones replay the graph reading the
// buffers' current contents; an enqueue error is returned and nothing kept.
// Needs a CUDA device (skips, printing why, without one).
#include "kernels/cuda/cuda_graph.h"

#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/layer_ops.h"
#include "tests/kernels/cuda/cuda_test_util.h"

namespace moeflow::cuda {
namespace {

TEST(CudaGraphTest, CapturesOncePerBatchSizeAndReplaysWithNewInputs) {
  MOEFLOW_SKIP_WITHOUT_CUDA_DEVICE();
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const int64_t n = 1000;
  std::vector<float> a = RandomFloats(n, 1), b = RandomFloats(n, 2);
  DeviceBuffer<float> da(a), db(b), dout(n);
  int enqueued = 0;
  auto step = [&]() -> absl::Status {
    ++enqueued;
    return RunResidualAdd({da.get(), db.get(), nullptr, dout.get(), n, stream});
  };
  {
    DecodeGraphCache graphs(stream);
    ASSERT_TRUE(graphs.Run(1, step).ok());
    std::vector<float> got = dout.Download();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], b[i] + a[i]) << i;
    // New inputs in the same buffers: the replay sees them.
    a = RandomFloats(n, 3);
    ASSERT_EQ(cudaMemcpy(da.get(), a.data(), n * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_TRUE(graphs.Run(1, step).ok());
    got = dout.Download();
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], b[i] + a[i]) << i;
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
