#include "exec/nn/linear.h"

#include <limits>
#include <stdexcept>
#include <string>

#include "exec/nn/numerics.h"

#include "exec/fp8/linear_fp8.h"

namespace tandem::nn {
namespace {

// c[M,N] = a[M,K] · b[K,N], all row-major and dense. Each c(i,j) is summed over k in increasing
// order, one multiply and one add per step (the j loop vectorises across outputs, never across k),
// so row i of c depends only on row i of a and on b.
template <class T>
void gemm_nn_fixed(const T* a, const T* b, T* c, int64_t M, int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; ++i) {
    T* ci = c + i * N;
    for (int64_t j = 0; j < N; ++j) ci[j] = T(0);
    const T* ai = a + i * K;
    for (int64_t k = 0; k < K; ++k) {
      const T aik = ai[k];
      const T* bk = b + k * N;
      for (int64_t j = 0; j < N; ++j) ci[j] += aik * bk[j];
    }
  }
}

// dW[N,K] += dy[M,N]ᵀ · x[M,K], accumulated in place one row of (dy, x) at a time, rows in order.
template <class T>
void wgrad_fixed(const T* dy, const T* x, T* dW, int64_t M, int64_t N, int64_t K) {
  for (int64_t i = 0; i < M; ++i) {
    const T* dyi = dy + i * N;
    const T* xi = x + i * K;
    for (int64_t n = 0; n < N; ++n) {
      const T g = dyi[n];
      T* dwn = dW + n * K;
      for (int64_t k = 0; k < K; ++k) dwn[k] += g * xi[k];
    }
  }
}

void check(bool ok, const char* op, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + what);
}

std::string shape(const auto& m) {
  return "[" + std::to_string(m.rows()) + "," + std::to_string(m.cols()) + "]";
}

int as_int(int64_t v) {
  if (v > std::numeric_limits<int>::max()) throw std::invalid_argument("linear: dimension too large");
  return static_cast<int>(v);
}

}  // namespace

template <class T>
Mat<T> linear_forward(const Mat<T>& x, const Mat<T>& W, Numerics n) {
  require_float_for<T>(n, "linear_forward");
  check(x.cols() == W.cols(), "linear_forward", "x " + shape(x) + " vs W " + shape(W));
  const int64_t M = x.rows(), N = W.rows(), K = W.cols();
  Mat<T> y(M, N);
  if (M == 0 || N == 0 || K == 0) return y.setZero();
  if (n == Numerics::fp8) {
    if constexpr (std::is_same_v<T, float>) {
      fp8::Fp8Options o;
      o.bf16_output = true;
      fp8::linear_fprop(x.data(), W.data(), y.data(), as_int(M), as_int(N), as_int(K), o);
      return y;
    }
  }
  Mat<T> Wt = W.transpose();  // [K,N], rows contiguous for the fixed-order kernel
  if (n == Numerics::bf16) {
    if constexpr (std::is_same_v<T, float>) {
      const Mat<float> xr = bf16_rounded(x);
      bf16_round_inplace(Wt);
      gemm_nn_fixed(xr.data(), Wt.data(), y.data(), M, N, K);
      bf16_round_inplace(y);
      return y;
    }
  }
  gemm_nn_fixed(x.data(), Wt.data(), y.data(), M, N, K);
  return y;
}

template <class T>
Mat<T> linear_backward_input(const Mat<T>& dy, const Mat<T>& W, Numerics n) {
  require_float_for<T>(n, "linear_backward_input");
  check(dy.cols() == W.rows(), "linear_backward_input", "dy " + shape(dy) + " vs W " + shape(W));
  const int64_t M = dy.rows(), N = W.rows(), K = W.cols();
  Mat<T> dx(M, K);
  if (M == 0 || N == 0 || K == 0) return dx.setZero();
  if (n == Numerics::fp8) {
    if constexpr (std::is_same_v<T, float>) {
      fp8::Fp8Options o;
      o.bf16_output = true;
      fp8::linear_dgrad(dy.data(), W.data(), dx.data(), as_int(M), as_int(N), as_int(K), o);
      return dx;
    }
  }
  if (n == Numerics::bf16) {
    if constexpr (std::is_same_v<T, float>) {
      const Mat<float> dyr = bf16_rounded(dy), Wr = bf16_rounded(W);
      gemm_nn_fixed(dyr.data(), Wr.data(), dx.data(), M, K, N);
      bf16_round_inplace(dx);
      return dx;
    }
  }
  gemm_nn_fixed(dy.data(), W.data(), dx.data(), M, K, N);
  return dx;
}

template <class T>
void linear_backward_weight(const Mat<T>& dy, const Mat<T>& x, Numerics n, Mat<T>& dW) {
  require_float_for<T>(n, "linear_backward_weight");
  check(dy.rows() == x.rows(), "linear_backward_weight", "dy " + shape(dy) + " vs x " + shape(x));
  check(dW.rows() == dy.cols() && dW.cols() == x.cols(), "linear_backward_weight",
        "dW " + shape(dW) + " vs dy " + shape(dy) + ", x " + shape(x));
  const int64_t M = dy.rows(), N = dy.cols(), K = x.cols();
  if (M == 0 || N == 0 || K == 0) return;
  if (n == Numerics::fp8) {
    if constexpr (std::is_same_v<T, float>) {
      Mat<float> tmp(N, K);
      fp8::linear_wgrad(dy.data(), x.data(), tmp.data(), as_int(M), as_int(N), as_int(K), {});
      dW += tmp;
      return;
    }
  }
  if (n == Numerics::bf16) {
    if constexpr (std::is_same_v<T, float>) {
      const Mat<float> dyr = bf16_rounded(dy), xr = bf16_rounded(x);
      wgrad_fixed(dyr.data(), xr.data(), dW.data(), M, N, K);
      return;
    }
  }
  wgrad_fixed(dy.data(), x.data(), dW.data(), M, N, K);
}

#define TANDEM_NN_LINEAR(T)                                                   \
  template Mat<T> linear_forward<T>(const Mat<T>&, const Mat<T>&, Numerics);  \
  template Mat<T> linear_backward_input<T>(const Mat<T>&, const Mat<T>&, Numerics); \
  template void linear_backward_weight<T>(const Mat<T>&, const Mat<T>&, Numerics, Mat<T>&);
TANDEM_NN_LINEAR(float)
TANDEM_NN_LINEAR(double)
#undef TANDEM_NN_LINEAR

}  // namespace tandem::nn
