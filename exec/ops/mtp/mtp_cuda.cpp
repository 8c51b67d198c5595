#include "exec/ops/mtp/mtp_cuda.h"

#include <stdexcept>
#include <string>

#include "common/signed_index.h"
#include "exec/ops/attention/attention_cuda.h"
#include "exec/ops/rmsnorm/rmsnorm_cuda.h"

namespace tandem::cuda {
namespace {

void require(bool ok, const char* what) {
  if (!ok) throw std::invalid_argument(std::string("DeviceMtpProj: ") + what);
}

std::size_t count_of(int rows, int cols) { return idx(rows) * idx(cols); }

// dst [rows, width] (row stride ld_dst) = src [rows, width] (row stride ld_src), on `stream`.
void copy_cols(const float* src, int ld_src, float* dst, int ld_dst, int rows, int width, cudaStream_t stream) {
  if (rows == 0 || width == 0) return;
  check(cudaMemcpy2DAsync(dst, idx(ld_dst) * sizeof(float), src,
                          idx(ld_src) * sizeof(float), idx(width) * sizeof(float),
                          idx(rows), cudaMemcpyDeviceToDevice, stream),
        "DeviceMtpProj: strided copy");
}

void copy_dense(const float* src, float* dst, std::size_t n, cudaStream_t stream) {
  if (n == 0) return;
  check(cudaMemcpyAsync(dst, src, n * sizeof(float), cudaMemcpyDeviceToDevice, stream), "DeviceMtpProj: save");
}

}  // namespace

DeviceMtpProj::DeviceMtpProj(DeviceLinear& linear, int hidden, double eps)
    : lin_(linear), hidden_(hidden), eps_(static_cast<float>(eps)) {
  require(hidden > 0, "hidden must be positive");
}

LinearWeight DeviceMtpProj::eh_proj(const DeviceMtpWeights& w) const {
  return LinearWeight(ConstDeviceMat(w.eh_proj, hidden_, 2 * hidden_), w.eh_proj_fp8);
}

void DeviceMtpProj::concat_normed(const DeviceMtpWeights& w, const float* h, const float* emb, int rows, float* cat,
                                  float* h_inv_rms, float* emb_inv_rms) {
  const cudaStream_t s = stream();
  const int H = hidden_;
  // rmsnorm_cuda.h's RMSNorm writes dense rows, so each half goes through one [rows, H] buffer and a
  // strided copy into its columns of cat (stream-ordered: the second norm reuses the buffer after
  // the first copy has read it).
  float* half = half_.reserve(count_of(rows, H), s);
  rmsnorm_forward(emb, w.enorm, rows, H, eps_, half, emb_inv_rms, s);
  copy_cols(half, H, cat, 2 * H, rows, H, s);
  rmsnorm_forward(h, w.hnorm, rows, H, eps_, half, h_inv_rms, s);
  copy_cols(half, H, cat + H, 2 * H, rows, H, s);
}

void DeviceMtpProj::forward(const DeviceMtpWeights& w, const float* h, const float* emb, int rows, float* out,
                            DeviceMtpSaved* saved) {
  require(rows >= 0, "forward: negative rows");
  const cudaStream_t s = stream();
  const std::size_t n = count_of(rows, hidden_);
  float* h_inv = nullptr;
  float* e_inv = nullptr;
  if (saved) {
    saved->rows = rows;
    copy_dense(h, saved->h.reserve(n, s), n, s);
    copy_dense(emb, saved->emb.reserve(n, s), n, s);
    h_inv = saved->h_inv_rms.reserve(idx(rows), s);
    e_inv = saved->emb_inv_rms.reserve(idx(rows), s);
  }
  if (rows == 0) return;
  float* cat = cat_.reserve(2 * n, s);
  concat_normed(w, h, emb, rows, cat, h_inv, e_inv);
  lin_.forward(ConstDeviceMat(cat, rows, 2 * hidden_), eh_proj(w), DeviceMat(out, rows, hidden_));
}

void DeviceMtpProj::backward_input(const DeviceMtpWeights& w, const DeviceMtpSaved& saved, const float* dy,
                                   DeviceMtpInputGrad& g) {
  const cudaStream_t s = stream();
  const int rows = saved.rows, H = hidden_;
  const std::size_t n = count_of(rows, H);
  g.rows = rows;
  float* dh = g.dh.reserve(n, s);
  float* d_emb = g.d_emb.reserve(n, s);
  float* cat = g.cat.reserve(2 * n, s);
  float* d_cat = g.d_cat.reserve(2 * n, s);
  if (rows == 0) return;
  concat_normed(w, saved.h.get(), saved.emb.get(), rows, cat, nullptr, nullptr);
  lin_.backward_input(ConstDeviceMat(dy, rows, H), eh_proj(w), DeviceMat(d_cat, rows, 2 * H));
  // rmsnorm_cuda.h's RMSNorm backward reads a dense dy: each half of d_cat is copied out first.
  float* half = half_.reserve(n, s);
  copy_cols(d_cat, 2 * H, half, H, rows, H, s);
  rmsnorm_backward_input(saved.emb.get(), w.enorm, half, rows, H, eps_, d_emb, s);
  copy_cols(d_cat + H, 2 * H, half, H, rows, H, s);
  rmsnorm_backward_input(saved.h.get(), w.hnorm, half, rows, H, eps_, dh, s);
}

void DeviceMtpProj::backward_weight(const DeviceMtpSaved& saved, const DeviceMtpInputGrad& g, const float* dy,
                                    const DeviceMtpGrads& grads) {
  const int rows = saved.rows, H = hidden_;
  require(g.rows == rows, "backward_weight: saved state and input gradient differ in rows");
  if (rows == 0) return;
  lin_.backward_weight(ConstDeviceMat(dy, rows, H), ConstDeviceMat(g.cat.get(), rows, 2 * H),
                       DeviceMat(grads.eh_proj, H, 2 * H));
  rmsnorm_weight_accumulate(saved.emb.get(), H, g.d_cat.get(), 2 * H, saved.emb_inv_rms.get(), rows, H, grads.enorm,
                            stream());
  rmsnorm_weight_accumulate(saved.h.get(), H, g.d_cat.get() + H, 2 * H, saved.h_inv_rms.get(), rows, H, grads.hnorm,
                            stream());
}

}  // namespace tandem::cuda
