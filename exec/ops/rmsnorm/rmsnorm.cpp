#include "exec/ops/rmsnorm/rmsnorm.h"

#include <cmath>
#include <stdexcept>

namespace tandem::nn {
namespace {

// r = 1 / sqrt(mean(x²) + eps) of one row, the squares summed in column order.
template <class T>
T inv_rms(const T* x, int64_t H, T eps) {
  T ss = 0;
  for (int64_t j = 0; j < H; ++j) ss += x[j] * x[j];
  return T(1) / std::sqrt(ss / T(H) + eps);
}

template <class T>
void check_shapes(const char* op, const Mat<T>& x, int64_t wsize, const Mat<T>* dy) {
  if (x.cols() != wsize || (dy && (dy->rows() != x.rows() || dy->cols() != x.cols())))
    throw std::invalid_argument(std::string(op) + ": shape mismatch");
}

}  // namespace

template <class T>
Mat<T> rmsnorm_forward(const Mat<T>& x, const Vec<T>& w, double eps) {
  check_shapes<T>("rmsnorm_forward", x, w.size(), nullptr);
  const int64_t M = x.rows(), H = x.cols();
  Mat<T> y(M, H);
  for (int64_t i = 0; i < M; ++i) {
    const T* xi = x.data() + i * H;
    T* yi = y.data() + i * H;
    const T r = inv_rms(xi, H, T(eps));
    for (int64_t j = 0; j < H; ++j) yi[j] = w[j] * (xi[j] * r);
  }
  return y;
}

template <class T>
Mat<T> rmsnorm_backward_input(const Mat<T>& x, const Vec<T>& w, double eps, const Mat<T>& dy) {
  check_shapes<T>("rmsnorm_backward_input", x, w.size(), &dy);
  const int64_t M = x.rows(), H = x.cols();
  Mat<T> dx(M, H);
  for (int64_t i = 0; i < M; ++i) {
    const T* xi = x.data() + i * H;
    const T* dyi = dy.data() + i * H;
    T* dxi = dx.data() + i * H;
    const T r = inv_rms(xi, H, T(eps));
    // dx_j = r · (g_j − x̂_j · mean_k(g_k x̂_k)), g = w ∘ dy, x̂ = x · r
    T dot = 0;
    for (int64_t j = 0; j < H; ++j) dot += (w[j] * dyi[j]) * (xi[j] * r);
    const T mean = dot / T(H);
    for (int64_t j = 0; j < H; ++j) dxi[j] = r * (w[j] * dyi[j] - (xi[j] * r) * mean);
  }
  return dx;
}

template <class T>
void rmsnorm_backward_weight(const Mat<T>& x, double eps, const Mat<T>& dy, Vec<T>& dw) {
  check_shapes<T>("rmsnorm_backward_weight", x, dw.size(), &dy);
  const int64_t M = x.rows(), H = x.cols();
  for (int64_t i = 0; i < M; ++i) {
    const T* xi = x.data() + i * H;
    const T* dyi = dy.data() + i * H;
    const T r = inv_rms(xi, H, T(eps));
    for (int64_t j = 0; j < H; ++j) dw[j] += dyi[j] * (xi[j] * r);
  }
}

#define TANDEM_NN_RMSNORM(T)                                                              \
  template Mat<T> rmsnorm_forward<T>(const Mat<T>&, const Vec<T>&, double);               \
  template Mat<T> rmsnorm_backward_input<T>(const Mat<T>&, const Vec<T>&, double, const Mat<T>&); \
  template void rmsnorm_backward_weight<T>(const Mat<T>&, double, const Mat<T>&, Vec<T>&);
TANDEM_NN_RMSNORM(float)
TANDEM_NN_RMSNORM(double)
#undef TANDEM_NN_RMSNORM

}  // namespace tandem::nn
