// The GPU half of the RMSNorm test: rmsnorm_cuda.h's forward, backward-input and backward-weight
// against rmsnorm.h's formulas in FP64 (19 rows of 1000 with 1% outliers): y within 1e-5, dx and dw
// within 1e-4 relative (the device's sum of squares is a tree, not the CPU's sequential sum).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/rmsnorm/rmsnorm_cuda.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;
using gputest::expect;
using gputest::make_input;
using gputest::to_device;
using gputest::to_host;

void check_rmsnorm() {
  const int m = 19, hdim = 1000;
  const float eps = 1e-6f;
  const std::vector<float> xs = make_input(m, hdim, 1, 21), ws = make_input(1, hdim, 0, 22), dys = make_input(m, hdim, 0, 23);
  auto gx = to_device(xs), gw = to_device(ws), gdy = to_device(dys);
  cu::DeviceBuffer<float> gy(xs.size()), gdx(xs.size()), gr(m), gdw(hdim);
  cu::rmsnorm_forward(gx.get(), gw.get(), m, hdim, eps, gy.get(), gr.get(), nullptr);
  cu::rmsnorm_backward_input(gx.get(), gw.get(), gdy.get(), m, hdim, eps, gdx.get(), nullptr);
  cu::rmsnorm_backward_weight(gx.get(), gdy.get(), gr.get(), m, hdim, gdw.get(), nullptr);
  const std::vector<float> y = to_host(gy, xs.size()), dxv = to_host(gdx, xs.size()), dw = to_host(gdw, hdim);
  std::vector<double> dw64(hdim, 0.0);
  double ey = 0, edx = 0, edw = 0;
  for (int i = 0; i < m; ++i) {
    const float* xi = xs.data() + idx(i) * hdim;
    const float* dyi = dys.data() + idx(i) * hdim;
    double ss = 0;
    for (int j = 0; j < hdim; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const double r = 1.0 / std::sqrt(ss / hdim + eps);
    double dot = 0;
    for (int j = 0; j < hdim; ++j) dot += (static_cast<double>(ws[j]) * dyi[j]) * (xi[j] * r);
    const double mean = dot / hdim;
    for (int j = 0; j < hdim; ++j) {
      const std::size_t q = idx(i) * hdim + j;
      const double want_y = ws[j] * (xi[j] * r), want_dx = r * (ws[j] * dyi[j] - (xi[j] * r) * mean);
      ey = std::max(ey, std::fabs(y[q] - want_y) / (std::fabs(want_y) + 1e-3));
      edx = std::max(edx, std::fabs(dxv[q] - want_dx) / (std::fabs(want_dx) + 1e-3));
      dw64[j] += dyi[j] * (xi[j] * r);
    }
  }
  for (int j = 0; j < hdim; ++j) edw = std::max(edw, std::fabs(dw[j] - dw64[j]) / (std::fabs(dw64[j]) + 1e-3));
  std::printf("rmsnorm: worst relative error y %.2e, dx %.2e, dw %.2e\n", ey, edx, edw);
  expect(ey < 1e-5 && edx < 1e-4 && edw < 1e-4, "rmsnorm forward/backward vs FP64");
}

}  // namespace

TANDEM_GPU_CHECK(rmsnorm) { check_rmsnorm(); }
