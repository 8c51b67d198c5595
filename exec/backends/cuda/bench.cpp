#include "exec/backends/cuda/bench.h"

#include <cstdint>
#include <functional>
#include <stdexcept>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/fp8_kernels.h"
#include "exec/ops/linear/linear_cuda_kernels.h"
#include "exec/backends/cuda/infra/lt_gemm.h"

namespace tandem::cuda {
namespace {

size_t sz(long long a, long long b) { return idx(a) * idx(b); }

// Milliseconds per call of f (warm-up calls first), events on `s`.
double time_ms(cudaStream_t s, const BenchTiming& t, const std::function<void()>& f) {
  for (int i = 0; i < t.warmup; ++i) f();
  cudaEvent_t a = nullptr, b = nullptr;
  check(cudaEventCreate(&a), "cudaEventCreate");
  check(cudaEventCreate(&b), "cudaEventCreate");
  check(cudaEventRecord(a, s), "cudaEventRecord");
  const int iters = t.iters > 0 ? t.iters : 1;
  for (int i = 0; i < iters; ++i) f();
  check(cudaEventRecord(b, s), "cudaEventRecord");
  check(cudaEventSynchronize(b), "cudaEventSynchronize");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return static_cast<double>(ms) / iters;
}

// A quantised operand that owns its device memory.
struct DevFp8 {
  DeviceBuffer<uint8_t> data;
  DeviceBuffer<float> scales;
  int rows = 0, k = 0;
  ScaleMode mode = ScaleMode::vec128;
  Fp8Operand op() const { return {data.get(), scales.get(), rows, k, mode}; }
};

DevFp8 alloc_rowwise(int rows, int k) {
  DevFp8 q{DeviceBuffer<uint8_t>(sz(rows, k)), DeviceBuffer<float>(sz(k_blocks(k), rows)), rows, k, ScaleMode::vec128};
  return q;
}
DevFp8 alloc_blocks(int rows, int k) {
  DevFp8 q{DeviceBuffer<uint8_t>(sz(rows, k)), DeviceBuffer<float>(sz(ceil_div(rows, kQuantBlock), k_blocks_padded(k))),
           rows, k, ScaleMode::blk128x128};
  return q;
}

DeviceBuffer<float> random_floats(size_t n, uint64_t seed, cudaStream_t s) {
  DeviceBuffer<float> x(n);
  fill_uniform(x.get(), n, seed, -1.0f, 1.0f, s);
  return x;
}

}  // namespace

BenchDevice bench_device() {
  BenchDevice d;
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  cudaDeviceProp p{};
  check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
  d.name = p.name;
  d.sm_count = p.multiProcessorCount;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.memory_gbytes = static_cast<double>(p.totalGlobalMem) / 1e9;
  int clock_khz = 0, bus_bits = 0;
  if (cudaDeviceGetAttribute(&clock_khz, cudaDevAttrMemoryClockRate, dev) == cudaSuccess &&
      cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, dev) == cudaSuccess)
    d.peak_hbm_gbytes_s = 2.0 * clock_khz * 1e3 * (bus_bits / 8.0) / 1e9;
  cudaGetLastError();
  d.cublaslt_version = static_cast<long long>(cublaslt_version());
  return d;
}

std::vector<GemmBenchRow> bench_gemm(const std::vector<GemmShape>& shapes, bool include_wgrad_mode,
                                     int sm_count_target, const BenchTiming& t) {
  Stream stream;
  const cudaStream_t s = stream.get();
  LtFp8Gemm lt;
  std::vector<GemmBenchRow> rows;
  uint64_t seed = 1;
  for (const GemmShape& g : shapes) {
    DeviceBuffer<float> xa = random_floats(sz(g.m, g.k), seed++, s);
    DeviceBuffer<float> xb = random_floats(sz(g.n, g.k), seed++, s);
    DevFp8 a = alloc_rowwise(g.m, g.k);
    DevFp8 b_blk = alloc_blocks(g.n, g.k);
    DevFp8 b_vec = alloc_rowwise(g.n, g.k);
    quantize_rowwise(xa.get(), g.m, g.k, a.data.get(), a.scales.get(), false, s);
    quantize_blocks(xb.get(), g.n, g.k, b_blk.data.get(), b_blk.scales.get(), false, s);
    quantize_rowwise(xb.get(), g.n, g.k, b_vec.data.get(), b_vec.scales.get(), false, s);
    DeviceBuffer<uint16_t> d(sz(g.m, g.n));  // BF16
    const double flops = 2.0 * g.m * static_cast<double>(g.n) * g.k;
    auto run = [&](const DevFp8& b, const char* mode, int target) {
      LtGemmOptions o;
      o.out = OutType::bf16;
      o.sm_count_target = target;
      const double ms = time_ms(s, t, [&] { lt.gemm(a.op(), b.op(), d.get(), o, s); });
      rows.push_back({g, mode, target, ms, flops / (ms * 1e-3) / 1e12});
    };
    run(b_blk, "vec128_blk128x128", 0);
    if (include_wgrad_mode) run(b_vec, "vec128_vec128", 0);
    if (sm_count_target > 0) run(b_blk, "vec128_blk128x128", sm_count_target);
  }
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  return rows;
}

std::vector<QuantBenchRow> bench_quant(int rows, int cols, const BenchTiming& t) {
  if (rows <= 0 || cols <= 0) throw std::invalid_argument("bench_quant: rows and cols must be positive");
  Stream stream;
  const cudaStream_t s = stream.get();
  DeviceBuffer<float> x = random_floats(sz(rows, cols), 7, s);
  DevFp8 rq = alloc_rowwise(rows, cols);
  DevFp8 cq = alloc_rowwise(cols, rows);
  DevFp8 bq = alloc_blocks(rows, cols);
  DevFp8 tq = alloc_blocks(cols, rows);
  const double elems = static_cast<double>(rows) * cols;
  std::vector<QuantBenchRow> out;
  auto add = [&](const char* op, double bytes, const std::function<void()>& f) {
    const double ms = time_ms(s, t, f);
    out.push_back({op, rows, cols, ms, bytes, bytes / (ms * 1e-3) / 1e9});
  };
  add("rowwise_1x128", elems * 5 + 4.0 * rows * k_blocks(cols),
      [&] { quantize_rowwise(x.get(), rows, cols, rq.data.get(), rq.scales.get(), false, s); });
  add("columnwise_1x128", elems * 5 + 4.0 * cols * k_blocks(rows),
      [&] { quantize_columnwise(x.get(), rows, cols, cq.data.get(), cq.scales.get(), false, s); });
  add("blocks_128x128", elems * 5 + 4.0 * bq.scales.size(),
      [&] { quantize_blocks(x.get(), rows, cols, bq.data.get(), bq.scales.get(), false, s); });
  add("transpose_blocks", elems * 2 + 4.0 * (bq.scales.size() + tq.scales.size()), [&] {
    transpose_blocks(bq.data.get(), bq.scales.get(), rows, cols, tq.data.get(), tq.scales.get(), s);
  });
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  return out;
}

MoeLayerResult bench_moe_layer(const MoeLayerConfig& c, const BenchTiming& t) {
  if (c.hidden <= 0 || c.inter <= 0 || c.local_experts <= 0 || c.rows <= 0)
    throw std::invalid_argument("bench_moe_layer: sizes must be positive");
  Stream stream;
  const cudaStream_t s = stream.get();
  LtFp8Gemm lt;
  MoeLayerResult r;
  r.config = c;
  const int E = c.local_experts, H = c.hidden, I = c.inter, I2 = 2 * c.inter;
  const int Me = ceil_div(ceil_div(c.rows, E), kQuantBlock) * kQuantBlock;  // 128-aligned segments
  r.rows_per_expert = Me;
  const int M = Me * E;

  // High-precision tensors, all experts' segments back to back.
  DeviceBuffer<float> x = random_floats(sz(M, H), 11, s), dy = random_floats(sz(M, H), 12, s);
  DeviceBuffer<float> gu(sz(M, I2)), h(sz(M, I)), dh(sz(M, I)), dgu(sz(M, I2));
  DeviceBuffer<uint16_t> y(sz(M, H)), dx(sz(M, H));  // BF16
  std::vector<DeviceBuffer<float>> w1, w2, dw1, dw2;
  std::vector<DevFp8> w1q, w2q, w1tq, w2tq;
  std::vector<DevFp8> xq, hq, dyq, dguq, xcq, hcq, dycq, dgucq;  // per expert (VEC128 scales per segment)
  for (int e = 0; e < E; ++e) {
    w1.push_back(random_floats(sz(I2, H), 100 + e, s));
    w2.push_back(random_floats(sz(H, I), 200 + e, s));
    dw1.emplace_back(sz(I2, H));
    dw2.emplace_back(sz(H, I));
    w1q.push_back(alloc_blocks(I2, H));
    w2q.push_back(alloc_blocks(H, I));
    w1tq.push_back(alloc_blocks(H, I2));
    w2tq.push_back(alloc_blocks(I, H));
    xq.push_back(alloc_rowwise(Me, H));
    hq.push_back(alloc_rowwise(Me, I));
    dyq.push_back(alloc_rowwise(Me, H));
    dguq.push_back(alloc_rowwise(Me, I2));
    xcq.push_back(alloc_rowwise(H, Me));
    hcq.push_back(alloc_rowwise(I, Me));
    dycq.push_back(alloc_rowwise(H, Me));
    dgucq.push_back(alloc_rowwise(I2, Me));
  }
  auto seg = [&](const DeviceBuffer<float>& b, int e, int cols) { return b.get() + sz(e, Me) * cols; };
  auto seg16 = [&](const DeviceBuffer<uint16_t>& b, int e, int cols) { return b.get() + sz(e, Me) * cols; };
  LtGemmOptions f32, b16;
  f32.out = OutType::f32;
  b16.out = OutType::bf16;
  f32.sm_count_target = b16.sm_count_target = c.sm_count_target;

  auto forward = [&] {
    for (int e = 0; e < E; ++e) {
      quantize_blocks(w1[e].get(), I2, H, w1q[e].data.get(), w1q[e].scales.get(), false, s);
      quantize_blocks(w2[e].get(), H, I, w2q[e].data.get(), w2q[e].scales.get(), false, s);
      transpose_blocks(w1q[e].data.get(), w1q[e].scales.get(), I2, H, w1tq[e].data.get(), w1tq[e].scales.get(), s);
      transpose_blocks(w2q[e].data.get(), w2q[e].scales.get(), H, I, w2tq[e].data.get(), w2tq[e].scales.get(), s);
      quantize_rowwise(seg(x, e, H), Me, H, xq[e].data.get(), xq[e].scales.get(), false, s);
      lt.gemm(xq[e].op(), w1q[e].op(), seg(gu, e, I2), f32, s);
      swiglu_forward(seg(gu, e, I2), Me, I, seg(h, e, I), s);
      quantize_rowwise(seg(h, e, I), Me, I, hq[e].data.get(), hq[e].scales.get(), false, s);
      lt.gemm(hq[e].op(), w2q[e].op(), seg16(y, e, H), b16, s);
    }
  };
  auto backward = [&] {
    for (int e = 0; e < E; ++e) {
      quantize_rowwise(seg(dy, e, H), Me, H, dyq[e].data.get(), dyq[e].scales.get(), false, s);
      quantize_columnwise(seg(dy, e, H), Me, H, dycq[e].data.get(), dycq[e].scales.get(), false, s);
      quantize_columnwise(seg(h, e, I), Me, I, hcq[e].data.get(), hcq[e].scales.get(), false, s);
      lt.gemm(dyq[e].op(), w2tq[e].op(), seg(dh, e, I), f32, s);     // dgrad2: dh = dy · W2
      lt.gemm(dycq[e].op(), hcq[e].op(), dw2[e].get(), f32, s);      // wgrad2: dW2 = dyᵀ · h
      swiglu_backward(seg(gu, e, I2), seg(dh, e, I), Me, I, seg(dgu, e, I2), s);
      quantize_rowwise(seg(dgu, e, I2), Me, I2, dguq[e].data.get(), dguq[e].scales.get(), false, s);
      quantize_columnwise(seg(dgu, e, I2), Me, I2, dgucq[e].data.get(), dgucq[e].scales.get(), false, s);
      quantize_columnwise(seg(x, e, H), Me, H, xcq[e].data.get(), xcq[e].scales.get(), false, s);
      lt.gemm(dguq[e].op(), w1tq[e].op(), seg16(dx, e, H), b16, s);  // dgrad1: dx = dgu · W1
      lt.gemm(dgucq[e].op(), xcq[e].op(), dw1[e].get(), f32, s);     // wgrad1: dW1 = dguᵀ · x
    }
  };
  const double per_expert_fwd = 2.0 * Me * static_cast<double>(H) * I2 + 2.0 * Me * static_cast<double>(I) * H;
  r.forward_gemm_flops = E * per_expert_fwd;
  r.backward_gemm_flops = 2 * r.forward_gemm_flops;
  r.forward_ms = time_ms(s, t, forward);
  r.backward_ms = time_ms(s, t, backward);
  r.forward_tflops = r.forward_gemm_flops / (r.forward_ms * 1e-3) / 1e12;
  r.backward_tflops = r.backward_gemm_flops / (r.backward_ms * 1e-3) / 1e12;

  // The grouped GEMMs alone (per-expert loops), as the simulator's grouped calibration rows.
  auto grouped = [&](const char* name, int n, int k, const std::function<void(int)>& one) {
    const double ms = time_ms(s, t, [&] { for (int e = 0; e < E; ++e) one(e); });
    const double flops = 2.0 * E * Me * static_cast<double>(n) * k;
    r.grouped.push_back({name, E, Me, n, k, ms, flops / (ms * 1e-3) / 1e12});
  };
  grouped("fprop_gate_up", I2, H, [&](int e) { lt.gemm(xq[e].op(), w1q[e].op(), seg(gu, e, I2), f32, s); });
  grouped("fprop_down", H, I, [&](int e) { lt.gemm(hq[e].op(), w2q[e].op(), seg16(y, e, H), b16, s); });
  grouped("dgrad_down", I, H, [&](int e) { lt.gemm(dyq[e].op(), w2tq[e].op(), seg(dh, e, I), f32, s); });
  grouped("dgrad_gate_up", H, I2, [&](int e) { lt.gemm(dguq[e].op(), w1tq[e].op(), seg16(dx, e, H), b16, s); });
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  return r;
}

}  // namespace tandem::cuda
