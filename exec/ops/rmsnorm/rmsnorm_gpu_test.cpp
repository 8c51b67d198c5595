// The GPU half of the RMSNorm test: rmsnorm_cuda.h's forward, backward-input and backward-weight
// against the CPU half, rmsnorm.h, run in FP64 on the same inputs (19 rows of 1000 with 1%
// outliers): y within 1e-5, dx and dw within 1e-4 relative (the device's sum of squares is a tree,
// not the CPU's sequential sum).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/rmsnorm/rmsnorm.h"
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
  // The CPU half in FP64 on the same inputs.
  nn::Mat<double> x(m, hdim), dy(m, hdim);
  nn::Vec<double> w(hdim);
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < hdim; ++j) {
      x(i, j) = xs[idx(i) * hdim + j];
      dy(i, j) = dys[idx(i) * hdim + j];
    }
  for (int j = 0; j < hdim; ++j) w(j) = ws[idx(j)];
  const double eps64 = eps;
  const nn::Mat<double> want_y = nn::rmsnorm_forward(x, w, eps64);
  const nn::Mat<double> want_dx = nn::rmsnorm_backward_input(x, w, eps64, dy);
  nn::Vec<double> want_dw = nn::Vec<double>::Zero(hdim);
  nn::rmsnorm_backward_weight(x, eps64, dy, want_dw);
  const auto rel = [](double got, double want) { return std::fabs(got - want) / (std::fabs(want) + 1e-3); };
  double ey = 0, edx = 0, edw = 0;
  for (int i = 0; i < m; ++i)
    for (int j = 0; j < hdim; ++j) {
      const std::size_t q = idx(i) * hdim + j;
      ey = std::max(ey, rel(y[q], want_y(i, j)));
      edx = std::max(edx, rel(dxv[q], want_dx(i, j)));
    }
  for (int j = 0; j < hdim; ++j) edw = std::max(edw, rel(dw[idx(j)], want_dw(j)));
  std::printf("rmsnorm: worst relative error y %.2e, dx %.2e, dw %.2e\n", ey, edx, edw);
  expect(ey < 1e-5 && edx < 1e-4 && edw < 1e-4, "rmsnorm forward/backward vs the CPU half in FP64");
}

}  // namespace

TANDEM_GPU_CHECK(rmsnorm) { check_rmsnorm(); }
