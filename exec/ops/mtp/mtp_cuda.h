// The input projection of a multi-token-prediction module on the device: the twin of
// exec/ops/mtp/mtp.h (read there: DeepSeek-V3 §2.2, and why the column order is the checkpoint's):
//
//   h' [M, hidden] = eh_proj · [ enorm(emb) ; hnorm(h) ]      eh_proj [hidden, 2·hidden]
//   cat [M, 2·hidden]: columns [0, hidden) = enorm(emb), [hidden, 2·hidden) = hnorm(h)
//
// h: the previous depth's hidden state (depth 1: the main model's last hidden state, before its
// final norm); emb: the shared embedding at token i+k (the caller looks it up with
// embedding_forward and scatters d_emb back with embedding_backward, exec/ops/embedding/embedding_cuda.h).
//
// Numerics: eh_proj through the caller's DeviceLinear in the run's numerics (exec/ops uses the
// run's Numerics here, unlike the head); FP8 with an optional pre-quantised weight
// (DeviceLinear::quantize_weight, once per step; results bit-identical to per-call quantisation).
// The two RMSNorms in FP32 (rmsnorm_cuda.h, tree-reduced: tolerance-equal to exec/ops), recomputed in
// backward-input as exec/ops does; their weight gradients accumulated in the CPU's row order
// (rmsnorm_weight_accumulate, attention.h) with the forward's inverse RMS of each row. The
// concatenation and the split of d_cat are strided device copies (exact).
// Against exec/ops in the same Numerics (exec/ops/head/head_gpu_test.cpp): exact 1e-5, bf16 2e-3, fp8 1e-2 rel-L2.
//
// Stream: the DeviceLinear's (linear.stream()), asynchronously. Buffers of DeviceMtpSaved /
// DeviceMtpInputGrad and the scratch are grow-only (a growth synchronises the stream first).
// Not thread-safe.
#pragma once

#include <cstddef>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"

namespace tandem::cuda {

// nn::MtpProjWeights as device pointers.
struct DeviceMtpWeights {
  const float* hnorm = nullptr;    // [hidden]
  const float* enorm = nullptr;    // [hidden]
  const float* eh_proj = nullptr;  // [hidden, 2·hidden]
  // fp8 only, optional: eh_proj quantised by DeviceLinear::quantize_weight (then used instead).
  const Fp8Weight* eh_proj_fp8 = nullptr;
};

// FP32 gradient accumulators, shapes as the weights (the caller zeroes them).
struct DeviceMtpGrads {
  float* hnorm = nullptr;
  float* enorm = nullptr;
  float* eh_proj = nullptr;
};

// nn::MtpSaved (h and emb copied) plus the forward's inverse RMS of each row of both norms.
struct DeviceMtpSaved {
  int rows = 0;
  DeviceBuffer<float> h, emb;                   // [rows, hidden]
  DeviceBuffer<float> h_inv_rms, emb_inv_rms;   // [rows]
};

// nn::MtpInputGrad (same fields, same shapes).
struct DeviceMtpInputGrad {
  int rows = 0;
  DeviceBuffer<float> dh, d_emb;  // [rows, hidden]
  DeviceBuffer<float> cat;        // [rows, 2·hidden] [enorm(emb) | hnorm(h)], recomputed
  DeviceBuffer<float> d_cat;      // [rows, 2·hidden] gradient at cat
};

class DeviceMtpProj {
 public:
  // linear must outlive this object; eps = rms_norm_eps (rounded to FP32 as exec/ops's T(eps)).
  // std::invalid_argument when hidden is not positive.
  DeviceMtpProj(DeviceLinear& linear, int hidden, double eps);
  DeviceMtpProj(const DeviceMtpProj&) = delete;
  DeviceMtpProj& operator=(const DeviceMtpProj&) = delete;

  int hidden() const { return hidden_; }
  cudaStream_t stream() const { return lin_.stream(); }

  // nn::mtp_input_forward: out [rows, hidden] (overwritten) from h, emb [rows, hidden] each.
  // Fills *saved when non-null (h and emb copied into it).
  void forward(const DeviceMtpWeights& w, const float* h, const float* emb, int rows, float* out,
               DeviceMtpSaved* saved);
  // nn::mtp_input_backward_input: g (grown, overwritten) from the saved state and dy [rows, hidden].
  void backward_input(const DeviceMtpWeights& w, const DeviceMtpSaved& saved, const float* dy, DeviceMtpInputGrad& g);
  // nn::mtp_input_backward_weight: grads.eh_proj += dyᵀ · cat, grads.enorm += …, grads.hnorm += …
  // (the CPU's order; each norm over its half of d_cat, rows in increasing order).
  void backward_weight(const DeviceMtpSaved& saved, const DeviceMtpInputGrad& g, const float* dy,
                       const DeviceMtpGrads& grads);

 private:
  LinearWeight eh_proj(const DeviceMtpWeights& w) const;
  // cat = [enorm(emb) | hnorm(h)]; the inverse RMS per row into the nullable pointers.
  void concat_normed(const DeviceMtpWeights& w, const float* h, const float* emb, int rows, float* cat,
                     float* h_inv_rms, float* emb_inv_rms);

  DeviceLinear& lin_;
  int hidden_;
  float eps_;
  DeviceBuffer<float> half_;  // one dense [rows, hidden] norm output / gradient half
  DeviceBuffer<float> cat_;   // forward's concatenation
};

}  // namespace tandem::cuda
