// The output head on the device: the twin of exec/ops/head/head.h on FP32 row-major device matrices.
//
//   logits [M, vocab] = proj( RMSNorm(h; norm) ),   norm [hidden], proj [vocab, hidden] (PyTorch layout)
//
// The main model and each MTP module have their own final norm and share proj, so both are passed
// per call (as exec/ops does); one DeviceHead serves all of them.
//
// Numerics (exec/ops/head/head.cpp's head_numerics): DeepSeek-V3 keeps the output head out of FP8, so a
// run in Numerics::fp8 runs this GEMM as bf16; exact and bf16 as linear.h. DeviceHead owns
// a DeviceLinear in head_numerics(run numerics) for that reason (so an fp8 run is bit-identical to
// a bf16 one here, as on the CPU). RMSNorm in FP32 (rmsnorm_cuda.h: tree-reduced sum of squares, so
// tolerance-equal, not bitwise, to exec/ops); its output is recomputed in backward-input as exec/ops
// does (only h is saved, plus the forward's inverse RMS per row for the norm's weight gradient,
// which is accumulated in the CPU's row order by rmsnorm_weight_accumulate, attention.h).
// Against exec/ops in the same Numerics: exact ~1e-6 rel-L2 (cuBLAS's summation order, the norm's
// tree), bf16 within BF16 rounding flips (~1e-3) — exec/ops/head/head_gpu_test.cpp.
//
// Streams: everything is enqueued on blas.stream(), asynchronously. Buffers of DeviceHeadSaved /
// DeviceHeadInputGrad and the internal scratch are grow-only (DeviceBuffer::reserve): a growth
// first synchronises the stream; steady-state calls (same shapes) allocate nothing and never
// synchronise. Not thread-safe; one DeviceHead per stream.
#pragma once

#include <cstdint>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/linear/linear_cuda.h"
#include "exec/backends/cuda/infra/lt_gemm.h"

namespace tandem::cuda {

// exec/ops/head/head.cpp's rule: the head's GEMM never runs in FP8.
inline Numerics head_numerics(Numerics run) {
  return run == Numerics::fp8 ? Numerics::bf16 : run;
}

// nn::HeadSaved: the head's input h (copied), plus the forward's inverse RMS per row.
struct DeviceHeadSaved {
  int rows = 0;
  DeviceBuffer<float> h;        // [rows, hidden]
  DeviceBuffer<float> inv_rms;  // [rows]
};

// nn::HeadInputGrad (same fields, same shapes).
struct DeviceHeadInputGrad {
  int rows = 0;
  DeviceBuffer<float> dh;        // [rows, hidden]
  DeviceBuffer<float> normed;    // [rows, hidden] RMSNorm(h), recomputed: proj's weight-grad input
  DeviceBuffer<float> d_normed;  // [rows, hidden] gradient at the norm's output
};

class DeviceHead {
 public:
  // blas and lt must outlive this object (lt is only used when head_numerics(run) is fp8, i.e.
  // never; it is what DeviceLinear's constructor takes). run: the run's numerics; the GEMM runs in
  // head_numerics(run). eps: rms_norm_eps (rounded to FP32, as exec/ops's T(eps)).
  // std::invalid_argument when hidden or vocab is not positive.
  DeviceHead(Blas& blas, LtFp8Gemm& lt, Numerics run, int hidden, int vocab, double eps);
  DeviceHead(const DeviceHead&) = delete;
  DeviceHead& operator=(const DeviceHead&) = delete;

  int hidden() const { return hidden_; }
  int vocab() const { return vocab_; }
  Numerics numerics() const { return lin_.numerics(); }  // head_numerics(run)
  cudaStream_t stream() const { return lin_.stream(); }

  // nn::head_forward: logits [rows, vocab] (overwritten) from h [rows, hidden]. Fills *saved
  // when non-null (h copied into it: the caller's h may be reused afterwards).
  void forward(const float* norm, const float* proj, const float* h, int rows, float* logits, DeviceHeadSaved* saved);

  // The loss sub-step of exec/blocks/block_ops.cpp (loss_f): forward, then the softmax
  // cross-entropy of loss_cuda.h (scaled by `scale`, target −1 ignored):
  //   dlogits [rows, vocab] = scale · (softmax(logits) − onehot(target))   (overwritten)
  //   *loss (ONE DEVICE double, nullable) = Σ over rows in row order of the row losses
  // logits [rows, vocab] receives the logits when non-null (else an internal buffer holds them).
  // targets: device int32 [rows]. Fills *saved when non-null. The MTP block then calls
  // backward_input (its loss_f does); the main head's backward_input belongs to mlp_b.
  void forward_loss(const float* norm, const float* proj, const float* h, int rows, const int32_t* targets,
                    double scale, float* dlogits, double* loss, float* logits, DeviceHeadSaved* saved);

  // nn::head_backward_input: g (grown, overwritten) from the saved state and dlogits [rows, vocab]:
  // g.normed = RMSNorm(h) (recomputed), g.d_normed = dlogits · proj (in head numerics: BF16-rounded
  // in bf16), g.dh = RMSNorm backward-input.
  void backward_input(const float* norm, const float* proj, const DeviceHeadSaved& saved, const float* dlogits,
                      DeviceHeadInputGrad& g);

  // nn::head_backward_weight: d_proj [vocab, hidden] += dlogitsᵀ · g.normed (head numerics, FP32
  // accumulate), d_norm [hidden] += Σ_i d_normed[i] ∘ h[i] · r_i in row order. Caller zeroes once.
  void backward_weight(const DeviceHeadSaved& saved, const DeviceHeadInputGrad& g, const float* dlogits,
                       float* d_norm, float* d_proj);

 private:
  DeviceLinear lin_;
  int hidden_;
  int vocab_;
  float eps_;
  DeviceBuffer<float> normed_;    // forward's norm output
  DeviceBuffer<float> logits_;    // forward_loss's logits when the caller passes none
  DeviceBuffer<double> row_loss_;  // forward_loss's per-row losses
};

}  // namespace tandem::cuda
