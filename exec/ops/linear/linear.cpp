#include "exec/ops/linear/linear.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

#include "exec/ops/rounding.h"

#include "exec/fp8/linear_fp8.h"

namespace tandem::nn {
namespace {

// Register/L1 blocking of the fixed-order kernels: kRows rows of the output at a time, kCols
// columns at a time, accumulators in a small local array (the compiler vectorises the column loop,
// whose trip count is a constant). Blocking changes which elements are computed together, never the
// operations that produce one element.
constexpr int64_t kRows = 4;
constexpr int64_t kCols = 64;

// c[M,N] = a[M,K] · b[K,N], all row-major and dense. Each c(i,j) starts at 0 and adds a(i,k)·b(k,j)
// for k = 0, 1, …, K−1 in order, one rounded multiply and one rounded add per step (no FMA: the
// library is built with -ffp-contract=off). Vectorisation runs across j, never across k, so the
// bits of row i of c depend only on row i of a and on b.
template <class T>
void gemm_nn_fixed(const T* a, const T* b, T* c, int64_t M, int64_t N, int64_t K) {
  for (int64_t i0 = 0; i0 < M; i0 += kRows) {
    const int64_t rows = std::min(kRows, M - i0);
    for (int64_t j0 = 0; j0 < N; j0 += kCols) {
      const int64_t cols = std::min(kCols, N - j0);
      T acc[kRows][kCols] = {};
      if (rows == kRows && cols == kCols) {
        const T* a0 = a + i0 * K;
        for (int64_t k = 0; k < K; ++k) {
          const T* bk = b + k * N + j0;
          const T x0 = a0[k], x1 = a0[K + k], x2 = a0[2 * K + k], x3 = a0[3 * K + k];
          for (int64_t j = 0; j < kCols; ++j) {
            acc[0][j] += x0 * bk[j];
            acc[1][j] += x1 * bk[j];
            acc[2][j] += x2 * bk[j];
            acc[3][j] += x3 * bk[j];
          }
        }
      } else {
        for (int64_t k = 0; k < K; ++k) {
          const T* bk = b + k * N + j0;
          for (int64_t r = 0; r < rows; ++r) {
            const T x = a[(i0 + r) * K + k];
            for (int64_t j = 0; j < cols; ++j) acc[r][j] += x * bk[j];
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) c[(i0 + r) * N + j0 + j] = acc[r][j];
    }
  }
}

// dW[N,K] += dy[M,N]ᵀ · x[M,K]. Each dW(n,k) starts from its current value and adds dy(i,n)·x(i,k)
// for i = 0, 1, …, M−1 in order (one rounded multiply and add per step), so splitting the rows
// over several calls, in order, gives the same bits as one call.
template <class T>
void wgrad_fixed(const T* dy, const T* x, T* dW, int64_t M, int64_t N, int64_t K) {
  const Mat<T> dyT = Eigen::Map<const Mat<T>>(dy, M, N).transpose();  // [N, M]: dy(·, n) contiguous
  for (int64_t n0 = 0; n0 < N; n0 += kRows) {
    const int64_t rows = std::min(kRows, N - n0);
    for (int64_t k0 = 0; k0 < K; k0 += kCols) {
      const int64_t cols = std::min(kCols, K - k0);
      T acc[kRows][kCols];
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) acc[r][k] = dW[(n0 + r) * K + k0 + k];
      if (rows == kRows && cols == kCols) {
        const T* g0 = dyT.data() + n0 * M;
        for (int64_t i = 0; i < M; ++i) {
          const T* xi = x + i * K + k0;
          const T d0 = g0[i], d1 = g0[M + i], d2 = g0[2 * M + i], d3 = g0[3 * M + i];
          for (int64_t k = 0; k < kCols; ++k) {
            acc[0][k] += d0 * xi[k];
            acc[1][k] += d1 * xi[k];
            acc[2][k] += d2 * xi[k];
            acc[3][k] += d3 * xi[k];
          }
        }
      } else {
        for (int64_t i = 0; i < M; ++i) {
          const T* xi = x + i * K + k0;
          for (int64_t r = 0; r < rows; ++r) {
            const T d = dyT(n0 + r, i);
            for (int64_t k = 0; k < cols; ++k) acc[r][k] += d * xi[k];
          }
        }
      }
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t k = 0; k < cols; ++k) dW[(n0 + r) * K + k0 + k] = acc[r][k];
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
