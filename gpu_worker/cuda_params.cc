#include "gpu_worker/cuda_params.h"

#include <cmath>

namespace moeflow::cuda {

RopeDeviceParams RopeDeviceParamsFrom(const Deepseek2RopeParams& rope) {
  RopeDeviceParams p;
  p.n_dims = static_cast<int>(rope.n_dims);
  // The same float expressions as Deepseek2RopeParams::Apply.
  p.theta_scale = std::pow(rope.freq_base, -2.0f / static_cast<float>(rope.n_dims));
  p.freq_scale = rope.freq_scale;
  p.ext_factor = rope.ext_factor;
  p.attn_factor = rope.attn_factor;
  p.ext_mscale = 1.0f + 0.1f * std::log(1.0f / rope.freq_scale);
  p.corr_low = rope.corr_dims[0];
  p.corr_high = rope.corr_dims[1];
  return p;
}

RouterDeviceParams RouterDeviceParamsFrom(const Deepseek2Config& c, int64_t k) {
  RouterDeviceParams p;
  p.n_experts = static_cast<int>(c.n_experts);
  p.k = static_cast<int>(k == 0 ? c.n_experts_used : k);
  p.sigmoid = c.gating == ExpertGating::kSigmoid ? 1 : 0;
  p.n_groups = static_cast<int>(c.n_expert_groups);
  p.n_groups_used = static_cast<int>(c.n_expert_groups_used);
  p.normalize = c.expert_weights_norm ? 1 : 0;
  p.scale = c.expert_weights_scale;
  return p;
}

}  // namespace moeflow::cuda
