#include "exec/ops/linear/linear_cuda.h"

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/fp8_kernels.h"
#include "exec/ops/linear/linear_cuda_kernels.h"

namespace tandem::cuda {
namespace {

void require(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

std::string dims(const ConstDeviceMat& m) {
  return "[" + std::to_string(m.rows) + "," + std::to_string(m.cols) + "] (ld " + std::to_string(m.ld) + ")";
}

void check_view(const ConstDeviceMat& m, const char* op, const char* name) {
  require(m.rows >= 0 && m.cols >= 0, op, std::string(name) + " " + dims(m) + ": negative dimension");
  require(m.ld >= m.cols, op, std::string(name) + " " + dims(m) + ": ld < cols");
  require(m.data != nullptr || m.rows == 0 || m.cols == 0, op, std::string(name) + " " + dims(m) + ": null data");
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

std::size_t count_of(int rows, int cols) { return idx(rows) * idx(cols); }

// The FP32 matrix of a weight argument (exact / bf16 need it even when a quantised copy is given).
const ConstDeviceMat& fp32_weight(const LinearWeight& W, const char* op) {
  check_view(W.w, op, "W");
  return W.w;
}

}  // namespace

std::size_t Fp8Weight::scales_count() const {
  return rows_p_ > 0 && cols_p_ > 0 ? count_of(ceil_div(rows_p_, kQuantBlock), k_blocks_padded(cols_p_)) : 0;
}

std::size_t Fp8Weight::t_scales_count() const {
  return rows_p_ > 0 && cols_p_ > 0 ? count_of(ceil_div(cols_p_, kQuantBlock), k_blocks_padded(rows_p_)) : 0;
}

DeviceLinear::DeviceLinear(Blas& blas, LtFp8Gemm& lt, Numerics numerics)
    : blas_(blas), lt_(lt), numerics_(numerics) {}

void DeviceLinear::set_sm_count_target(int sms) {
  if (sms < 0) throw std::invalid_argument("DeviceLinear::set_sm_count_target: sms must be >= 0, got " + std::to_string(sms));
  sm_count_target_ = sms;
}

// ---------------------------------------------------------------- building blocks

const float* DeviceLinear::dense_padded(ConstDeviceMat m, int rows_p, int cols_p) {
  if (rows_p == m.rows && cols_p == m.cols && m.ld == m.cols) return m.data;
  float* p = pad_.reserve(count_of(rows_p, cols_p), stream());
  linear_pad_copy(m.data, m.rows, m.cols, m.ld, p, rows_p, cols_p, stream());
  return p;
}

// m padded to [rows_p, cols_p], quantised in 1x128 tiles: along its rows (operand [rows_p, cols_p])
// or, along_cols, along its columns (operand mᵀ [cols_p, rows_p]); VEC128 scales either way.
Fp8Operand DeviceLinear::quantize_1x128(ConstDeviceMat m, int rows_p, int cols_p, bool along_cols,
                                        DeviceBuffer<uint8_t>& codes, DeviceBuffer<float>& scales) {
  const float* src = dense_padded(m, rows_p, cols_p);
  const int op_rows = along_cols ? cols_p : rows_p, op_k = along_cols ? rows_p : cols_p;
  uint8_t* c = codes.reserve(count_of(op_rows, op_k), stream());
  float* s = scales.reserve(count_of(k_blocks(op_k), op_rows), stream());
  if (along_cols)
    quantize_columnwise(src, rows_p, cols_p, c, s, false, stream());
  else
    quantize_rowwise(src, rows_p, cols_p, c, s, false, stream());
  return {c, s, op_rows, op_k, ScaleMode::vec128};
}

void DeviceLinear::quantize_weight(ConstDeviceMat W, Fp8Weight& out) {
  const char* op = "DeviceLinear::quantize_weight";
  require(numerics_ == Numerics::fp8, op, "numerics is not fp8");
  check_view(W, op, "W");
  out.rows_ = W.rows;
  out.cols_ = W.cols;
  out.rows_p_ = fp8_padded(W.rows);
  out.cols_p_ = fp8_padded(W.cols);
  if (W.rows == 0 || W.cols == 0) return;
  const int np = out.rows_p_, kp = out.cols_p_;
  const float* src = dense_padded(W, np, kp);
  uint8_t* codes = out.codes_.reserve(count_of(np, kp), stream());
  float* scales = out.scales_.reserve(out.scales_count(), stream());
  quantize_blocks(src, np, kp, codes, scales, false, stream());
  // Wᵀ from W's own quantisation (exec/fp8 linear_dgrad: transpose(quantize_blocks(W))).
  uint8_t* t_codes = out.t_codes_.reserve(count_of(kp, np), stream());
  float* t_scales = out.t_scales_.reserve(out.t_scales_count(), stream());
  transpose_blocks(codes, scales, np, kp, t_codes, t_scales, stream());
}

const Fp8Weight& DeviceLinear::fp8_weight(const LinearWeight& W) {
  if (W.q) {
    require(W.q->rows() == W.rows() && W.q->cols() == W.cols(), "DeviceLinear",
            "the quantised weight [" + std::to_string(W.q->rows()) + "," + std::to_string(W.q->cols()) +
                "] does not match W " + dims(W.w));
    return *W.q;
  }
  quantize_weight(W.w, weight_);
  return weight_;
}

const float* DeviceLinear::fp8_gemm_scratch(const Fp8Operand& a, const Fp8Operand& b) {
  float* d = out_.reserve(count_of(a.rows, b.rows), stream());
  LtGemmOptions o;
  o.out = OutType::f32;
  o.sm_count_target = sm_count_target_;
  lt_.gemm(a, b, d, o, stream());
  return d;
}

// y = the [y.rows, y.cols] top-left part of a·bᵀ (a, b possibly padded), BF16-rounded and/or
// accumulated. Written straight into y when nothing is cut, added or misaligned.
void DeviceLinear::fp8_gemm_into(const Fp8Operand& a, const Fp8Operand& b, DeviceMat y, bool round_bf16,
                                 bool accumulate) {
  const bool direct = !accumulate && a.rows == y.rows && b.rows == y.cols && y.ld == y.cols && aligned16(y.data);
  if (direct) {
    LtGemmOptions o;
    o.out = OutType::f32;
    o.sm_count_target = sm_count_target_;
    lt_.gemm(a, b, y.data, o, stream());
    if (round_bf16) epilogue(y.data, y.ld, y, true, false);
    return;
  }
  const float* d = fp8_gemm_scratch(a, b);
  epilogue(d, b.rows, y, round_bf16, accumulate);
}

const uint16_t* DeviceLinear::to_bf16(ConstDeviceMat m, DeviceBuffer<uint16_t>& buf) {
  uint16_t* p = buf.reserve(count_of(m.rows, m.cols), stream());
  linear_to_bf16(m.data, m.rows, m.cols, m.ld, p, stream());
  return p;
}

void DeviceLinear::epilogue(const float* src, int ld_src, DeviceMat dst, bool round_bf16, bool accumulate) {
  linear_epilogue(src, ld_src, dst.rows, dst.cols, dst.data, dst.ld, round_bf16, accumulate, stream());
}

void DeviceLinear::zero(DeviceMat m) {
  if (m.rows == 0 || m.cols == 0) return;
  check(cudaMemset2DAsync(m.data, sizeof(float) * idx(m.ld), 0,
                          sizeof(float) * idx(m.cols), idx(m.rows),
                          stream()),
        "DeviceLinear: cudaMemset2DAsync");
}

// ---------------------------------------------------------------- the three GEMMs

void DeviceLinear::forward(ConstDeviceMat x, const LinearWeight& W, DeviceMat y, bool accumulate) {
  forward_impl(x, &W, &y, 1, accumulate);
}

void DeviceLinear::forward_shared(ConstDeviceMat x, const LinearWeight* W, const DeviceMat* y, int count) {
  forward_impl(x, W, y, count, false);
}

void DeviceLinear::forward_impl(ConstDeviceMat x, const LinearWeight* W, const DeviceMat* y, int count,
                                bool accumulate) {
  const char* op = "DeviceLinear::forward";
  check_view(x, op, "x");
  require(count >= 0 && (count == 0 || (W && y)), op, "bad weight / output lists");
  for (int i = 0; i < count; ++i) {
    check_view(y[i], op, "y");
    require(W[i].rows() >= 0 && W[i].cols() == x.cols, op, "x " + dims(x) + " vs W " + dims(W[i].w));
    require(y[i].rows == x.rows && y[i].cols == W[i].rows(), op, "y " + dims(y[i]) + " vs x " + dims(x) + ", W " +
                                                                     dims(W[i].w));
  }
  const int M = x.rows, K = x.cols;
  if (M == 0) return;
  if (K == 0) {  // an empty sum: y = 0, as exec/ops
    if (!accumulate)
      for (int i = 0; i < count; ++i) zero(y[i]);
    return;
  }
  switch (numerics_) {
    case Numerics::exact:
      for (int i = 0; i < count; ++i) {
        const int N = W[i].rows();
        if (N == 0) continue;
        const ConstDeviceMat& w = fp32_weight(W[i], op);
        blas_.gemm(false, true, M, N, K, 1.0f, x.data, x.ld, w.data, w.ld, accumulate ? 1.0f : 0.0f, y[i].data,
                   y[i].ld);
      }
      return;
    case Numerics::bf16: {
      const uint16_t* xb = to_bf16(x, bf16_a_);
      for (int i = 0; i < count; ++i) {
        const int N = W[i].rows();
        if (N == 0) continue;
        const uint16_t* wb = to_bf16(fp32_weight(W[i], op), bf16_b_);
        if (!accumulate) {
          blas_.gemm_bf16(false, true, M, N, K, 1.0f, xb, K, wb, K, 0.0f, y[i].data, y[i].ld);
          epilogue(y[i].data, y[i].ld, y[i], true, false);
        } else {
          float* d = out_.reserve(count_of(M, N), stream());
          blas_.gemm_bf16(false, true, M, N, K, 1.0f, xb, K, wb, K, 0.0f, d, N);
          epilogue(d, N, y[i], true, true);
        }
      }
      return;
    }
    case Numerics::fp8: {
      const Fp8Operand a = quantize_1x128(x, fp8_padded(M), fp8_padded(K), false, codes_a_, scales_a_);
      for (int i = 0; i < count; ++i) {
        if (W[i].rows() == 0) continue;
        const Fp8Weight& q = fp8_weight(W[i]);
        fp8_gemm_into(a, q.fprop(), y[i], true, accumulate);
      }
      return;
    }
  }
}

void DeviceLinear::backward_input(ConstDeviceMat dy, const LinearWeight& W, DeviceMat dx, bool accumulate) {
  const char* op = "DeviceLinear::backward_input";
  check_view(dy, op, "dy");
  check_view(dx, op, "dx");
  require(W.rows() == dy.cols && W.cols() >= 0, op, "dy " + dims(dy) + " vs W " + dims(W.w));
  require(dx.rows == dy.rows && dx.cols == W.cols(), op, "dx " + dims(dx) + " vs dy " + dims(dy) + ", W " +
                                                             dims(W.w));
  const int M = dy.rows, N = dy.cols, K = W.cols();
  if (M == 0 || K == 0) return;
  if (N == 0) {
    if (!accumulate) zero(dx);
    return;
  }
  switch (numerics_) {
    case Numerics::exact: {
      const ConstDeviceMat& w = fp32_weight(W, op);
      blas_.gemm(false, false, M, K, N, 1.0f, dy.data, dy.ld, w.data, w.ld, accumulate ? 1.0f : 0.0f, dx.data,
                 dx.ld);
      return;
    }
    case Numerics::bf16: {
      const uint16_t* dyb = to_bf16(dy, bf16_a_);
      const uint16_t* wb = to_bf16(fp32_weight(W, op), bf16_b_);
      if (!accumulate) {
        blas_.gemm_bf16(false, false, M, K, N, 1.0f, dyb, N, wb, K, 0.0f, dx.data, dx.ld);
        epilogue(dx.data, dx.ld, dx, true, false);
      } else {
        float* d = out_.reserve(count_of(M, K), stream());
        blas_.gemm_bf16(false, false, M, K, N, 1.0f, dyb, N, wb, K, 0.0f, d, K);
        epilogue(d, K, dx, true, true);
      }
      return;
    }
    case Numerics::fp8: {
      const Fp8Weight& q = fp8_weight(W);
      const Fp8Operand a = quantize_1x128(dy, fp8_padded(M), q.padded_rows(), false, codes_a_, scales_a_);
      fp8_gemm_into(a, q.dgrad(), dx, true, accumulate);
      return;
    }
  }
}

void DeviceLinear::backward_weight(ConstDeviceMat dy, ConstDeviceMat x, DeviceMat dW) {
  backward_weight_split(dy, x, &dW, 1);
}

void DeviceLinear::backward_weight_split(ConstDeviceMat dy, ConstDeviceMat x, const DeviceMat* dW, int count) {
  const char* op = "DeviceLinear::backward_weight";
  check_view(dy, op, "dy");
  check_view(x, op, "x");
  require(dy.rows == x.rows, op, "dy " + dims(dy) + " vs x " + dims(x));
  require(count >= 0 && (count == 0 || dW), op, "bad gradient list");
  long long parts = 0;
  for (int i = 0; i < count; ++i) {
    check_view(dW[i], op, "dW");
    require(dW[i].cols == x.cols, op, "dW " + dims(dW[i]) + " vs x " + dims(x));
    parts += dW[i].rows;
  }
  require(parts == dy.cols, op, "the gradients' rows (" + std::to_string(parts) + ") != dy's columns " + dims(dy));
  const int M = dy.rows, N = dy.cols, K = x.cols;
  if (M == 0 || N == 0 || K == 0) return;  // dW += 0
  switch (numerics_) {
    case Numerics::exact: {
      int off = 0;
      for (int i = 0; i < count; ++i) {
        const int n = dW[i].rows;
        if (n > 0) blas_.gemm(true, false, n, K, M, 1.0f, dy.data + off, dy.ld, x.data, x.ld, 1.0f, dW[i].data, dW[i].ld);
        off += n;
      }
      return;
    }
    case Numerics::bf16: {
      const uint16_t* dyb = to_bf16(dy, bf16_a_);  // dense [M, N]
      const uint16_t* xb = to_bf16(x, bf16_b_);    // dense [M, K]
      int off = 0;
      for (int i = 0; i < count; ++i) {
        const int n = dW[i].rows;
        if (n > 0) blas_.gemm_bf16(true, false, n, K, M, 1.0f, dyb + off, N, xb, K, 1.0f, dW[i].data, dW[i].ld);
        off += n;
      }
      return;
    }
    case Numerics::fp8: {
      const int mp = fp8_padded(M), np = fp8_padded(N), kp = fp8_padded(K);
      const Fp8Operand a = quantize_1x128(dy, mp, np, true, codes_a_, scales_a_);  // dyᵀ [np, mp]
      const Fp8Operand b = quantize_1x128(x, mp, kp, true, codes_b_, scales_b_);   // xᵀ [kp, mp]
      const float* d = fp8_gemm_scratch(a, b);                               // [np, kp]
      int off = 0;
      for (int i = 0; i < count; ++i) {
        if (dW[i].rows > 0) epilogue(d + idx(off) * kp, kp, dW[i], false, true);
        off += dW[i].rows;
      }
      return;
    }
  }
}

// ---------------------------------------------------------------- SwiGLU FFN

DeviceFfn::DeviceFfn(DeviceLinear& linear, int hidden, int inter) : lin_(linear), hidden_(hidden), inter_(inter) {
  require(hidden > 0 && inter > 0, "DeviceFfn", "hidden (" + std::to_string(hidden) + ") and inter (" +
                                                    std::to_string(inter) + ") must be positive");
}

LinearWeight DeviceFfn::weight(const float* w, int rows, int cols, const Fp8Weight* q) const {
  return LinearWeight(ConstDeviceMat(w, rows, cols), lin_.numerics() == Numerics::fp8 ? q : nullptr);
}

void DeviceFfn::quantize_weights(const DeviceFfnWeights& w, DeviceFfnFp8Weights& out) {
  lin_.quantize_weight(ConstDeviceMat(w.gate, inter_, hidden_), out.gate);
  lin_.quantize_weight(ConstDeviceMat(w.up, inter_, hidden_), out.up);
  lin_.quantize_weight(ConstDeviceMat(w.down, hidden_, inter_), out.down);
}

void DeviceFfn::forward(const DeviceFfnWeights& w, const float* x, int rows, float* y, DeviceFfnSaved* saved) {
  require(rows >= 0, "DeviceFfn::forward", "negative rows");
  if (saved) {
    saved->x = x;
    saved->rows = rows;
  }
  if (rows == 0) return;
  const int H = hidden_, I = inter_;
  const DeviceFfnFp8Weights* q = w.fp8;
  float* gu = (saved ? saved->gate_up : gate_up_).reserve(count_of(rows, 2 * I), lin_.stream());
  const LinearWeight ws[2] = {weight(w.gate, I, H, q ? &q->gate : nullptr), weight(w.up, I, H, q ? &q->up : nullptr)};
  const DeviceMat halves[2] = {DeviceMat(gu, rows, I, 2 * I), DeviceMat(gu + I, rows, I, 2 * I)};
  lin_.forward_shared(ConstDeviceMat(x, rows, H), ws, halves, 2);
  float* act = act_.reserve(count_of(rows, I), lin_.stream());
  swiglu_forward(gu, rows, I, act, lin_.stream());
  lin_.forward(ConstDeviceMat(act, rows, I), weight(w.down, H, I, q ? &q->down : nullptr), DeviceMat(y, rows, H));
}

void DeviceFfn::backward_input(const DeviceFfnWeights& w, const DeviceFfnSaved& saved, const float* dy, float* dx,
                               DeviceFfnInputGrad& g) {
  const int rows = saved.rows;
  g.rows = rows;
  if (rows == 0) return;
  require(saved.gate_up.get() != nullptr, "DeviceFfn::backward_input", "nothing saved by forward");
  const int H = hidden_, I = inter_;
  const DeviceFfnFp8Weights* q = w.fp8;
  float* ds = act_.reserve(count_of(rows, I), lin_.stream());  // gradient at the SwiGLU output
  lin_.backward_input(ConstDeviceMat(dy, rows, H), weight(w.down, H, I, q ? &q->down : nullptr),
                      DeviceMat(ds, rows, I));
  float* dgu = g.d_gate_up.reserve(count_of(rows, 2 * I), lin_.stream());
  swiglu_backward(saved.gate_up.get(), ds, rows, I, dgu, lin_.stream());
  float* so = g.swiglu_out.reserve(count_of(rows, I), lin_.stream());
  swiglu_forward(saved.gate_up.get(), rows, I, so, lin_.stream());
  // dx = d_gate · W_gate, then += d_up · W_up (each rounded first in bf16 / fp8, as exec/ops).
  lin_.backward_input(ConstDeviceMat(dgu, rows, I, 2 * I), weight(w.gate, I, H, q ? &q->gate : nullptr),
                      DeviceMat(dx, rows, H), false);
  lin_.backward_input(ConstDeviceMat(dgu + I, rows, I, 2 * I), weight(w.up, I, H, q ? &q->up : nullptr),
                      DeviceMat(dx, rows, H), true);
}

void DeviceFfn::backward_weight(const DeviceFfnSaved& saved, const DeviceFfnInputGrad& g, const float* dy,
                                const DeviceFfnGrads& grads) {
  const int rows = saved.rows;
  require(g.rows == rows, "DeviceFfn::backward_weight", "the input gradient's rows (" + std::to_string(g.rows) +
                                                            ") differ from the saved forward's (" +
                                                            std::to_string(rows) + ")");
  if (rows == 0) return;
  const int H = hidden_, I = inter_;
  lin_.backward_weight(ConstDeviceMat(dy, rows, H), ConstDeviceMat(g.swiglu_out.get(), rows, I),
                       DeviceMat(grads.down, H, I));
  const DeviceMat parts[2] = {DeviceMat(grads.gate, I, H), DeviceMat(grads.up, I, H)};
  lin_.backward_weight_split(ConstDeviceMat(g.d_gate_up.get(), rows, 2 * I), ConstDeviceMat(saved.x, rows, H), parts,
                             2);
}

}  // namespace tandem::cuda
