#include "exec/ops/head/head_cuda.h"

#include <cstddef>
#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/ops/attention/attention_cuda.h"
#include "exec/ops/rmsnorm/rmsnorm_cuda.h"
#include "exec/ops/embedding/loss_cuda.h"

namespace tandem::cuda {
namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("DeviceHead: ") + what);
}

std::size_t count_of(int rows, int cols) { return idx(rows) * idx(cols); }

}  // namespace

DeviceHead::DeviceHead(Blas& blas, LtFp8Gemm& lt, Numerics run, int hidden, int vocab, double eps)
    : lin_(blas, lt, head_numerics(run)), hidden_(hidden), vocab_(vocab), eps_(static_cast<float>(eps)) {
  require(hidden > 0, "hidden must be positive");
  require(vocab > 0, "vocab must be positive");
}

void DeviceHead::forward(const float* norm, const float* proj, const float* h, int rows, float* logits,
                         DeviceHeadSaved* saved) {
  require(rows >= 0, "forward: negative rows");
  const cudaStream_t s = stream();
  const std::size_t n = count_of(rows, hidden_);
  float* inv_rms = nullptr;
  if (saved) {
    saved->rows = rows;
    float* h_copy = saved->h.reserve(n, s);
    inv_rms = saved->inv_rms.reserve(idx(rows), s);
    if (n > 0) check(cudaMemcpyAsync(h_copy, h, n * sizeof(float), cudaMemcpyDeviceToDevice, s), "DeviceHead: save h");
  }
  if (rows == 0) return;
  float* normed = normed_.reserve(n, s);
  rmsnorm_forward(h, norm, rows, hidden_, eps_, normed, inv_rms, s);
  lin_.forward(ConstDeviceMat(normed, rows, hidden_), ConstDeviceMat(proj, vocab_, hidden_),
               DeviceMat(logits, rows, vocab_));
}

void DeviceHead::forward_loss(const float* norm, const float* proj, const float* h, int rows, const int32_t* targets,
                              double scale, float* dlogits, double* loss, float* logits, DeviceHeadSaved* saved) {
  require(rows >= 0, "forward_loss: negative rows");
  const cudaStream_t s = stream();
  float* out = logits ? logits : logits_.reserve(count_of(rows, vocab_), s);
  forward(norm, proj, h, rows, out, saved);
  // cross_entropy zeroes *loss itself when rows == 0.
  double* row_loss = row_loss_.reserve(idx(rows > 0 ? rows : 1), s);
  cross_entropy(out, rows, vocab_, targets, scale, dlogits, row_loss, loss, s);
}

void DeviceHead::backward_input(const float* norm, const float* proj, const DeviceHeadSaved& saved,
                                const float* dlogits, DeviceHeadInputGrad& g) {
  const cudaStream_t s = stream();
  const int rows = saved.rows;
  const std::size_t n = count_of(rows, hidden_);
  g.rows = rows;
  float* dh = g.dh.reserve(n, s);
  float* normed = g.normed.reserve(n, s);
  float* d_normed = g.d_normed.reserve(n, s);
  if (rows == 0) return;
  rmsnorm_forward(saved.h.get(), norm, rows, hidden_, eps_, normed, nullptr, s);
  lin_.backward_input(ConstDeviceMat(dlogits, rows, vocab_), ConstDeviceMat(proj, vocab_, hidden_),
                      DeviceMat(d_normed, rows, hidden_));
  rmsnorm_backward_input(saved.h.get(), norm, d_normed, rows, hidden_, eps_, dh, s);
}

void DeviceHead::backward_weight(const DeviceHeadSaved& saved, const DeviceHeadInputGrad& g, const float* dlogits,
                                 float* d_norm, float* d_proj) {
  const int rows = saved.rows;
  require(g.rows == rows, "backward_weight: saved state and input gradient differ in rows");
  if (rows == 0) return;
  // exec/ops's order: the projection first, then the norm (independent accumulators).
  lin_.backward_weight(ConstDeviceMat(dlogits, rows, vocab_), ConstDeviceMat(g.normed.get(), rows, hidden_),
                       DeviceMat(d_proj, vocab_, hidden_));
  rmsnorm_weight_accumulate(saved.h.get(), hidden_, g.d_normed.get(), hidden_, saved.inv_rms.get(), rows, hidden_,
                            d_norm, stream());
}

}  // namespace tandem::cuda
