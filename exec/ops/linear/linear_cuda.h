// The device linear layer in PyTorch layout and the SwiGLU FFN on it: the CUDA twins of
// exec/ops/linear/linear.h and exec/ops/linear/ffn.h, on FP32 row-major device matrices.
//
//   forward          y[M,N]   = x[M,K] · W[N,K]ᵀ
//   backward_input   dx[M,K]  = dy[M,N] · W[N,K]
//   backward_weight  dW[N,K] += dy[M,N]ᵀ · x[M,K]        (dW is the FP32 gradient accumulator)
//
// Numerics (the CPU's, exec/ops/linear/linear.h; which operand is rounded how):
//   exact  cuBLAS FP32 (Blas, pedantic: no TF32). Not bit-identical to the CPU's fixed summation
//          order: equal to FP32 reordering, rel-L2 ~ 2^-24 sqrt(K).
//   bf16   both GEMM inputs rounded to BF16 (linear_cuda_kernels.h: exec/fp8's RNE bit for bit), cuBLAS
//          BF16 GEMM with FP32 accumulation; forward / backward_input outputs rounded to BF16 as
//          the CPU rounds them; the weight gradient is added to dW in FP32, unrounded. Products of
//          BF16 values are exact in FP32, so only the summation order differs from the CPU: outputs
//          are mostly bit-equal, else one BF16 ulp apart (or within the FP32 reordering error of
//          an output near zero).
//   fp8    DeepSeek-V3's recipe exactly as exec/fp8/linear_fp8.cpp, with fp8_kernels.h's quantisers
//          (bit-identical codes and scales) and LtFp8Gemm (cuBLASLt):
//            forward          x 1x128 rowwise (VEC128)  x  W 128x128 blocks (BLK128x128)
//            backward_input   dy 1x128 rowwise          x  Wᵀ = transpose_blocks(quantised W), the
//                                                           same FP8 weights as forward (as the CPU)
//            backward_weight  dyᵀ, xᵀ 1x128 columnwise along the tokens (VEC128 x VEC128), K = M
//          cuBLASLt writes FP32; forward / backward_input are then rounded to BF16 (what the CPU's
//          bf16_output does), the weight gradient is added to dW in FP32. The codes are identical,
//          so the results differ from the CPU by cuBLASLt's accumulation only (rel-L2 ~ 1e-4).
//
// FP8 shape limits: LtFp8Gemm needs M, N multiples of 4 and K of 16, and only multiples of 128
// have been exercised on cuBLASLt's 128-block modes (exec/backends/cuda/README.md). So every FP8 GEMM
// dimension that is not a multiple of 128 is zero-padded to one (kFp8Align): the operand is copied
// into a zeroed workspace before quantisation, the result is cut back by the epilogue. This is
// exact: a zero cannot raise a tile's or a block's amax, and ceil(d/128) is unchanged, so the real
// elements get the CPU's codes and scales; padding quantises to zero codes that add +0. Shapes that
// are multiples of 128 (the 128-row-padded expert segments, DeepSeek's widths) take no copy. A
// dimension of 0 is handled before any GEMM: K = 0 gives y = 0 (or leaves it when accumulating),
// M = 0 or N = 0 does nothing, as the CPU.
//
// Views: matrices are passed as (pointer, rows, cols, row stride ld), so the FFN can read and
// write the column halves of its fused gate|up matrix in place. `accumulate` adds the (rounded)
// result to the destination in FP32 instead of overwriting it: the CPU's `dx += linear_backward_input(...)`.
//
// Streams and workspaces: everything is enqueued on blas.stream(), which LtFp8Gemm calls get too.
// Temporary buffers (BF16 copies, padded copies, FP8 codes and scales, an FP32 GEMM output) are
// grow-only members reused by every call; a growth first synchronises the stream (the old
// allocation may still be in use by queued work), so steady-state calls allocate nothing. Not
// thread-safe; one DeviceLinear per stream. If the Blas's stream is changed, synchronise the old
// one first.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

#include "exec/backends/cuda/infra/blas.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/lt_gemm.h"
#include "exec/spec/numerics.h"

namespace tandem::cuda {

using spec::Numerics;  // exec/spec/numerics.h: the CPU reference's type

// FP32 row-major device matrix views; ld = 0 means dense (ld = cols).
struct DeviceMat {
  float* data = nullptr;
  int rows = 0;
  int cols = 0;
  int ld = 0;
  DeviceMat() = default;
  DeviceMat(float* p, int r, int c, int stride = 0) : data(p), rows(r), cols(c), ld(stride > 0 ? stride : c) {}
};
struct ConstDeviceMat {
  const float* data = nullptr;
  int rows = 0;
  int cols = 0;
  int ld = 0;
  ConstDeviceMat() = default;
  ConstDeviceMat(const float* p, int r, int c, int stride = 0)
      : data(p), rows(r), cols(c), ld(stride > 0 ? stride : c) {}
  ConstDeviceMat(const DeviceMat& m) : data(m.data), rows(m.rows), cols(m.cols), ld(m.ld) {}  // NOLINT: implicit
};

// Every FP8 GEMM dimension is zero-padded to a multiple of this (see the header comment).
inline constexpr int kFp8Align = 128;
inline int fp8_padded(int d) { return (d + kFp8Align - 1) / kFp8Align * kFp8Align; }

// A weight W [N, K] quantised for the FP8 GEMMs by DeviceLinear::quantize_weight, so a weight used
// by many micro-batches is quantised once per step: 128x128 blocks of W zero-padded to
// [Np, Kp] = [fp8_padded(N), fp8_padded(K)], plus its exact transpose Wᵀ [Kp, Np] for
// backward_input. The real region's codes and the scales are bit-identical to exec/fp8's
// quantize_blocks(W) and transpose() of it (the scale arrays have the same size and layout,
// since padding to 128 adds no block); padding codes are 0.
class Fp8Weight {
 public:
  int rows() const { return rows_; }          // N
  int cols() const { return cols_; }          // K
  int padded_rows() const { return rows_p_; }  // Np
  int padded_cols() const { return cols_p_; }  // Kp
  // forward's b operand: [Np, Kp], BLK128x128.
  Fp8Operand fprop() const { return {codes_.get(), scales_.get(), rows_p_, cols_p_, ScaleMode::blk128x128}; }
  // backward_input's b operand: Wᵀ [Kp, Np], BLK128x128.
  Fp8Operand dgrad() const { return {t_codes_.get(), t_scales_.get(), cols_p_, rows_p_, ScaleMode::blk128x128}; }
  // Device arrays (for checks): codes [Np, Kp], scales ceil(Np/128) * roundup(ceil(Kp/128), 4);
  // t_codes [Kp, Np], t_scales ceil(Kp/128) * roundup(ceil(Np/128), 4).
  const uint8_t* codes() const { return codes_.get(); }
  const float* scales() const { return scales_.get(); }
  const uint8_t* t_codes() const { return t_codes_.get(); }
  const float* t_scales() const { return t_scales_.get(); }
  std::size_t scales_count() const;
  std::size_t t_scales_count() const;

 private:
  friend class DeviceLinear;
  int rows_ = 0, cols_ = 0, rows_p_ = 0, cols_p_ = 0;
  DeviceBuffer<uint8_t> codes_, t_codes_;
  DeviceBuffer<float> scales_, t_scales_;
};

// A weight argument: the FP32 matrix W [N, K] (exact and bf16 use it; fp8 quantises it per call)
// and, for fp8, optionally its quantisation from quantize_weight (then used instead, and w.data
// may be null).
struct LinearWeight {
  ConstDeviceMat w;
  const Fp8Weight* q = nullptr;
  LinearWeight(ConstDeviceMat m) : w(m) {}  // NOLINT: implicit
  LinearWeight(ConstDeviceMat m, const Fp8Weight* quantised) : w(m), q(quantised) {}
  LinearWeight(const Fp8Weight& quantised) : w(nullptr, quantised.rows(), quantised.cols()), q(&quantised) {}  // NOLINT
  int rows() const { return w.rows; }
  int cols() const { return w.cols; }
};

class DeviceLinear {
 public:
  // blas and lt must outlive this object; its stream is blas.stream().
  DeviceLinear(Blas& blas, LtFp8Gemm& lt, Numerics numerics);
  DeviceLinear(const DeviceLinear&) = delete;
  DeviceLinear& operator=(const DeviceLinear&) = delete;

  Numerics numerics() const { return numerics_; }
  cudaStream_t stream() const { return blas_.stream(); }

  // The SM budget of the FP8 GEMMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET): a rank whose GEMMs
  // overlap communication kernels leaves the SMs those hold (scenario comm.sms) to them, so the
  // two do not fight over SMs. 0 (the default): all SMs. Exact and bf16 GEMMs (cuBLAS) have no
  // such knob and are unaffected. std::invalid_argument when negative.
  void set_sm_count_target(int sms);
  int sm_count_target() const { return sm_count_target_; }

  // fp8 only (std::invalid_argument otherwise): quantise W [N, K] into out (its buffers grow only).
  void quantize_weight(ConstDeviceMat W, Fp8Weight& out);

  // y [M, N] = x [M, K] · Wᵀ (+ y when accumulate).
  void forward(ConstDeviceMat x, const LinearWeight& W, DeviceMat y, bool accumulate = false);
  // y[i] = x · W[i]ᵀ for i < count, x converted (bf16) or quantised (fp8) once for all of them:
  // the FFN's gate and up projections.
  void forward_shared(ConstDeviceMat x, const LinearWeight* W, const DeviceMat* y, int count);
  // dx [M, K] = dy [M, N] · W (+ dx when accumulate).
  void backward_input(ConstDeviceMat dy, const LinearWeight& W, DeviceMat dx, bool accumulate = false);
  // dW [N, K] += dyᵀ · x.
  void backward_weight(ConstDeviceMat dy, ConstDeviceMat x, DeviceMat dW);
  // dW[i] += (columns [n_0 + ... + n_{i-1}, + n_i) of dy)ᵀ · x, n_i = dW[i].rows, which must add up
  // to dy.cols: the FFN's gate and up gradients from its fused [M, 2·inter] gradient. x is
  // converted / quantised once; in fp8 dy is quantised once, columnwise (its tiles run down a
  // column, so a column's codes do not depend on its neighbours: bit-identical to quantising each
  // part alone) and one GEMM gives all parts.
  void backward_weight_split(ConstDeviceMat dy, ConstDeviceMat x, const DeviceMat* dW, int count);

 private:
  void forward_impl(ConstDeviceMat x, const LinearWeight* W, const DeviceMat* y, int count, bool accumulate);
  const float* dense_padded(ConstDeviceMat m, int rows_p, int cols_p);
  Fp8Operand quantize_1x128(ConstDeviceMat m, int rows_p, int cols_p, bool along_cols, DeviceBuffer<uint8_t>& codes,
                            DeviceBuffer<float>& scales);
  const Fp8Weight& fp8_weight(const LinearWeight& W);
  void fp8_gemm_into(const Fp8Operand& a, const Fp8Operand& b, DeviceMat y, bool round_bf16, bool accumulate);
  const float* fp8_gemm_scratch(const Fp8Operand& a, const Fp8Operand& b);
  const uint16_t* to_bf16(ConstDeviceMat m, DeviceBuffer<uint16_t>& buf);
  void epilogue(const float* src, int ld_src, DeviceMat dst, bool round_bf16, bool accumulate);
  void zero(DeviceMat m);

  Blas& blas_;
  LtFp8Gemm& lt_;
  Numerics numerics_;
  int sm_count_target_ = 0;
  DeviceBuffer<float> pad_;      // a zero-padded FP32 copy being quantised
  DeviceBuffer<float> out_;      // a GEMM's FP32 output before its epilogue
  DeviceBuffer<uint8_t> codes_a_, codes_b_;
  DeviceBuffer<float> scales_a_, scales_b_;
  DeviceBuffer<uint16_t> bf16_a_, bf16_b_;
  Fp8Weight weight_;               // W quantised per call when no Fp8Weight is given
};

// ---------------------------------------------------------------------------------------------
// SwiGLU FFN (exec/ops/linear/ffn.h): y = down( silu(gate(x)) * up(x) ), gate, up [inter, hidden],
// down [hidden, inter], every GEMM in the DeviceLinear's numerics. The dense layers, the shared
// expert and every routed expert (over its 128-row-padded segment; zero rows give zero outputs
// and add nothing to the weight gradients) call it.
//
// Layout choice: gate(x) and up(x) live in one fused [rows, 2·inter] matrix gate|up, the layout
// linear_cuda_kernels.h's swiglu_forward / swiglu_backward take. The two projections are computed as two GEMMs
// (forward_shared: x converted / quantised once) against the separate gate and up weights, each
// writing its column half in place (ld = 2·inter), rather than one GEMM against a stacked
// [2·inter, hidden] weight: the weights stay the caller's (exec/ops's FfnWeights layout), and in
// fp8 a stacked weight would put gate and up rows into one 128x128 block whenever inter % 128 != 0,
// changing the scales the CPU computes. The input gradient mirrors the CPU's
//   dx = bf16?(d_gate · W_gate) + bf16?(d_up · W_up)
// (two GEMMs reading the column halves of d_gate|d_up, the second accumulated), and the gate and
// up weight gradients come from one GEMM over the fused gradient (backward_weight_split).
// Numerics vs exec/ops: SwiGLU uses CUDA's expf (linear_cuda_kernels.h), so g·sigmoid(g)·u differs from the
// CPU's by an FP32 rounding or two; everything else is as DeviceLinear.
struct DeviceFfnFp8Weights {
  Fp8Weight gate, up, down;
};

struct DeviceFfnWeights {
  const float* gate = nullptr;  // [inter, hidden]
  const float* up = nullptr;    // [inter, hidden]
  const float* down = nullptr;  // [hidden, inter]
  // fp8: the three quantised once per step (DeviceFfn::quantize_weights); null: quantised per call.
  const DeviceFfnFp8Weights* fp8 = nullptr;
};

// FP32 gradient accumulators, shapes as the weights (the caller zeroes them).
struct DeviceFfnGrads {
  float* gate = nullptr;
  float* up = nullptr;
  float* down = nullptr;
};

// What forward keeps for backward (one per micro-batch in flight): x is the caller's and must stay
// valid until backward_weight (exec/ops copies it; here it is not copied); gate|up is owned.
struct DeviceFfnSaved {
  const float* x = nullptr;        // [rows, hidden]
  int rows = 0;
  DeviceBuffer<float> gate_up;   // [rows, 2·inter]: gate(x) | up(x)
};

// backward_input's results kept for backward_weight (exec/ops's FfnInputGrad, fused).
struct DeviceFfnInputGrad {
  int rows = 0;
  DeviceBuffer<float> d_gate_up;   // [rows, 2·inter]: gradient at gate(x) | at up(x)
  DeviceBuffer<float> swiglu_out;  // [rows, inter]: silu(gate(x)) * up(x), recomputed
};

class DeviceFfn {
 public:
  // linear must outlive this object.
  DeviceFfn(DeviceLinear& linear, int hidden, int inter);

  int hidden() const { return hidden_; }
  int inter() const { return inter_; }

  // fp8 only: quantise gate, up and down once (e.g. per step).
  void quantize_weights(const DeviceFfnWeights& w, DeviceFfnFp8Weights& out);
  // y [rows, hidden] = ffn(x [rows, hidden]); fills *saved when saved != nullptr.
  void forward(const DeviceFfnWeights& w, const float* x, int rows, float* y, DeviceFfnSaved* saved);
  // dx [rows, hidden] from dy [rows, hidden]; fills g for the weight pass.
  void backward_input(const DeviceFfnWeights& w, const DeviceFfnSaved& saved, const float* dy, float* dx,
                      DeviceFfnInputGrad& g);
  // grads.gate / up / down += their gradients (FP32).
  void backward_weight(const DeviceFfnSaved& saved, const DeviceFfnInputGrad& g, const float* dy,
                       const DeviceFfnGrads& grads);

 private:
  LinearWeight weight(const float* w, int rows, int cols, const Fp8Weight* q) const;

  DeviceLinear& lin_;
  int hidden_;
  int inter_;
  DeviceBuffer<float> gate_up_;  // forward's gate|up when nothing is saved
  DeviceBuffer<float> act_;      // forward's SwiGLU output / backward's gradient at it
};

}  // namespace tandem::cuda
