// AdamW on a flat FP32 parameter span (the FP32 master weights), with FP32 moments — PyTorch's
// torch.optim.AdamW update (decoupled weight decay, bias-corrected moments):
//   m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p·(1 − lr·wd)
//   p ← p − (lr / (1−β1^t)) · m / ( sqrt(v) / sqrt(1−β2^t) + eps )
// Defaults are DeepSeek-V3's (β1 0.9, β2 0.95, wd 0.1); eps 1e-8. Element-wise in FP32 (the bias
// corrections in double, then rounded to float), one element after another: deterministic and
// independent of how the parameters are split into spans. `step` is t, 1 for the first update.
// bf16_moments rounds m and v to BF16 after each update (DeepSeek-V3 keeps the moments in BF16).
// Which tensors get weight decay (all, or not the norms) is the caller's choice: call with
// weight_decay = 0 for the spans that should not decay. Gradient clipping is the caller's too
// (sum_of_squares below gives the global norm in a fixed order).
#pragma once

#include <cstdint>
#include <span>

namespace tandem::nn {

struct AdamWConfig {
  double lr = 0;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool bf16_moments = false;
};

// One AdamW update of params from grads; m and v (same length, zero before step 1) are updated.
void adamw_step(std::span<float> params, std::span<const float> grads, std::span<float> m,
                std::span<float> v, int64_t step, const AdamWConfig& c);

// Σ g² in double, elements in order (for global-norm gradient clipping across spans).
double sum_of_squares(std::span<const float> g);

}  // namespace tandem::nn
