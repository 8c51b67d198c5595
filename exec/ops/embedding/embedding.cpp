#include "exec/ops/embedding/embedding.h"

#include <stdexcept>
#include <string>

namespace tandem::nn {
namespace {

void check_token(int32_t t, int64_t vocab) {
  if (t < 0 || t >= vocab)
    throw std::out_of_range("embedding: token " + std::to_string(t) + " outside [0, " +
                            std::to_string(vocab) + ")");
}

}  // namespace

template <class T>
Mat<T> embedding_forward(const Mat<T>& table, std::span<const int32_t> tokens) {
  const int64_t M = static_cast<int64_t>(tokens.size());
  Mat<T> y(M, table.cols());
  for (int64_t i = 0; i < M; ++i) {
    check_token(tokens[i], table.rows());
    y.row(i) = table.row(tokens[i]);
  }
  return y;
}

template <class T>
void embedding_backward(std::span<const int32_t> tokens, const Mat<T>& dy, Mat<T>& dtable) {
  if (dy.rows() != static_cast<int64_t>(tokens.size()) || dy.cols() != dtable.cols())
    throw std::invalid_argument("embedding_backward: shape mismatch");
  const int64_t H = dy.cols();
  for (int64_t i = 0; i < dy.rows(); ++i) {
    check_token(tokens[i], dtable.rows());
    T* dst = dtable.data() + int64_t{tokens[i]} * H;
    const T* src = dy.data() + i * H;
    for (int64_t j = 0; j < H; ++j) dst[j] += src[j];
  }
}

#define TANDEM_NN_EMBEDDING(T)                                                        \
  template Mat<T> embedding_forward<T>(const Mat<T>&, std::span<const int32_t>);      \
  template void embedding_backward<T>(std::span<const int32_t>, const Mat<T>&, Mat<T>&);
TANDEM_NN_EMBEDDING(float)
TANDEM_NN_EMBEDDING(double)
#undef TANDEM_NN_EMBEDDING

}  // namespace tandem::nn
