// The GPU checks' shared harness: `tandem_gpu_tests <check>` runs one registered check and exits
// 0 (pass), 1 (fail) or 77 (skipped: no CUDA device), so CTest runs each check as its own test
// (tests/CMakeLists.txt lists the names). A check is a plain function registered by name:
//
//   TANDEM_GPU_CHECK(router) { ... expect(ok, "what"); ... }
//
// A check fails by calling expect(false, ...) (it goes on, to report every failure) or by
// throwing; it skips by calling skip("why").
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"

namespace tandem::gputest {

void expect(bool ok, const std::string& what);
[[noreturn]] void skip(const std::string& why);

// Failures counted so far; an informational case restores the count after it ran.
int failure_count();
void set_failure_count(int n);

struct Registrar {
  Registrar(const char* name, void (*check)());
};

template <class T>
cuda::DeviceBuffer<T> to_device(const std::vector<T>& v) {
  cuda::DeviceBuffer<T> d(v.size());
  if (!v.empty()) d.upload(v.data(), v.size());
  return d;
}
template <class T>
std::vector<T> to_host(const cuda::DeviceBuffer<T>& d, std::size_t n) {
  std::vector<T> v(n);
  if (n > 0) d.download(v.data(), n);
  return v;
}
template <class T>
std::vector<T> to_host(const cuda::DeviceBuffer<T>& d) {
  return to_host(d, d.size());
}
// n elements at a device pointer (a layer's workspace, a view into a bigger buffer).
template <class T>
std::vector<T> to_host(const T* device, std::size_t n) {
  std::vector<T> v(n);
  if (n > 0) cuda::check(cudaMemcpy(v.data(), device, n * sizeof(T), cudaMemcpyDeviceToHost), "to_host");
  return v;
}

// A matrix's (or vector's) elements in storage order: row-major for nn::Mat (exec/ops/tensor.h).
template <class M>
auto flat(const M& m) {
  using T = std::decay_t<decltype(*m.data())>;
  return std::vector<T>(m.data(), m.data() + m.size());
}

// Every stream's work done; also makes uploads (cudaMemcpy from pageable memory may return
// before its DMA lands) visible to every stream.
inline void sync_device(const char* what) { cuda::check(cudaDeviceSynchronize(), what); }

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// ||got - want||_2 / ||want||_2 (0 when both are zero).
template <class A, class B>
double rel_l2(const A& got, const B& want) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < want.size(); ++i) {
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    num += d * d;
    den += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// d[M, N] = c0 + a[M, K] · b[N, K]ᵀ in FP64 (a, b row-major, any element type; c0 [M, N]
// row-major, or none), and per element the sum of the absolute terms, |c0| + Σ_k |a·b|.
struct Gemm64 {
  std::vector<double> v, abs;
};
template <class A, class B>
Gemm64 gemm_abt64(const A& a, const B& b, int M, int N, int K, const float* c0 = nullptr) {
  const std::size_t mn = idx(M) * idx(N);
  Gemm64 r{std::vector<double>(mn), std::vector<double>(mn)};
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      const std::size_t ij = idx(i) * N + j;
      double s = c0 ? static_cast<double>(c0[ij]) : 0.0, sa = std::fabs(s);
      for (int p = 0; p < K; ++p) {
        const double t = static_cast<double>(a[idx(i) * K + p]) *
                         static_cast<double>(b[idx(j) * K + p]);
        s += t;
        sa += std::fabs(t);
      }
      r.v[ij] = s;
      r.abs[ij] = sa;
    }
  return r;
}

}  // namespace tandem::gputest

#define TANDEM_GPU_CHECK(name)                                                       \
  static void tandem_gpu_check_##name();                                            \
  static const ::tandem::gputest::Registrar tandem_gpu_registrar_##name(#name,      \
                                                                        &tandem_gpu_check_##name); \
  static void tandem_gpu_check_##name()
