// The CUDA backend's FP8 kernels; see fp8_kernels.h for the contracts (and exec/fp8/quantize.h for the
// CPU reference the quantisers mirror bit for bit).
// Arithmetic that must match the CPU is written with explicit IEEE intrinsics (__fdiv_rn,
// __fmul_rn, __fadd_rn), so neither nvcc's contraction nor a stray fast-math flag can change it.

#include "exec/backends/cuda/infra/fp8_kernels.h"

#include <cfloat>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/infra/device_util.cuh"

namespace tandem::cuda {
namespace {

using device::grid_for;

constexpr float kE4M3Max = 448.0f;
constexpr unsigned kFull = 0xFFFFFFFFu;

struct Scaling {
  float factor;
  float scale;
};

// exec/fp8 block_scaling() + scaling_of(): a block with a non-finite element, a zero block or an
// unusable amax gets 1, 1.
__device__ __forceinline__ Scaling block_scaling(float amax, bool finite, bool pow2) {
  if (!finite || !(amax > 0.0f) || !isfinite(amax)) return {1.0f, 1.0f};
  float factor = __fdiv_rn(kE4M3Max, amax);
  if (isinf(factor)) factor = FLT_MAX;
  if (pow2) {
    factor = __uint_as_float(__float_as_uint(factor) & 0x7F800000u);
    return {factor, __fdiv_rn(1.0f, factor)};
  }
  return {factor, __fdiv_rn(amax, kE4M3Max)};
}

__device__ __forceinline__ uint8_t encode(float x, float factor) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(__fmul_rn(x, factor), __NV_SATFINITE, __NV_E4M3));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// The scaling of one 1x128 tile held by a warp, four values per lane (lane + 32 t): the warp's
// amax and whether every value is finite, as exec/fp8 scales a tile.
__device__ __forceinline__ Scaling warp_tile_scaling(const float (&v)[4], bool pow2) {
  float amax = 0.0f;
  bool finite = true;
#pragma unroll
  for (int t = 0; t < 4; ++t) {
    finite = finite && isfinite(v[t]);
    amax = fmaxf(amax, fabsf(v[t]));
  }
  return block_scaling(warp_max(amax), __all_sync(kFull, finite), pow2);
}

// One warp per 1x128 tile (row r, K block kb); lane handles elements k0 + lane + 32 j.
__global__ void quantize_rowwise_kernel(const float* __restrict__ x, int rows, int cols, int L,
                                        uint8_t* __restrict__ codes, float* __restrict__ scales, bool pow2) {
  const long long tile = static_cast<long long>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (tile >= static_cast<long long>(rows) * L) return;  // warp-uniform
  const int lane = threadIdx.x % 32;
  const int r = static_cast<int>(tile / L);
  const int kb = static_cast<int>(tile % L);
  const int k0 = kb * kQuantBlock;
  const float* row = x + idx(r) * cols;
  float v[4];
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int k = k0 + lane + 32 * j;
    v[j] = k < cols ? row[k] : 0.0f;
  }
  const Scaling s = warp_tile_scaling(v, pow2);
  uint8_t* out = codes + idx(r) * cols;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int k = k0 + lane + 32 * j;
    if (k < cols) out[k] = encode(v[j], s.factor);
  }
  if (lane == 0) scales[idx(kb) * rows + r] = s.scale;
}

// A block = 128 rows (one K block of xᵀ) x 32 columns of x, staged in shared memory; each of the
// 8 warps then quantises 4 columns (= 4 rows of xᵀ), lane handling rows lane + 32 t.
__global__ void quantize_columnwise_kernel(const float* __restrict__ x, int rows, int cols,
                                           uint8_t* __restrict__ codes, float* __restrict__ scales, bool pow2) {
  __shared__ float tile[kQuantBlock][33];
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int c0 = blockIdx.x * 32;
  const int rb = blockIdx.y;
  const int r0 = rb * kQuantBlock;
  for (int i = 0; i < kQuantBlock / 8; ++i) {
    const int rr = warp + 8 * i;
    const int r = r0 + rr;
    const int c = c0 + lane;
    tile[rr][lane] = (r < rows && c < cols) ? x[idx(r) * cols + c] : 0.0f;
  }
  __syncthreads();
  for (int j = 0; j < 4; ++j) {
    const int cc = warp * 4 + j;
    const int c = c0 + cc;
    if (c >= cols) break;  // warp-uniform
    float v[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) v[t] = tile[lane + 32 * t][cc];  // zero beyond `rows`: cannot change amax
    const Scaling s = warp_tile_scaling(v, pow2);
    uint8_t* out = codes + idx(c) * rows;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      const int r = r0 + lane + 32 * t;
      if (r < rows) out[r] = encode(v[t], s.factor);
    }
    if (lane == 0) scales[idx(rb) * cols + c] = s.scale;
  }
}

// One 256-thread block per 128x128 block (rb, kb): a pass for amax, a pass to encode (the second
// read hits L2).
__global__ void quantize_blocks_kernel(const float* __restrict__ w, int rows, int cols, int L4,
                                       uint8_t* __restrict__ codes, float* __restrict__ scales, bool pow2) {
  __shared__ float warp_amax[8];
  const int kb = blockIdx.x;
  const int rb = blockIdx.y;
  const int r0 = rb * kQuantBlock;
  const int k0 = kb * kQuantBlock;
  const int tid = threadIdx.x;
  float amax = 0.0f;
  bool finite = true;
  for (int e = tid; e < kQuantBlock * kQuantBlock; e += blockDim.x) {
    const int r = r0 + e / kQuantBlock;
    const int k = k0 + e % kQuantBlock;
    if (r < rows && k < cols) {
      const float v = w[idx(r) * cols + k];
      finite = finite && isfinite(v);
      amax = fmaxf(amax, fabsf(v));
    }
  }
  amax = warp_max(amax);
  if (tid % 32 == 0) warp_amax[tid / 32] = amax;
  finite = __syncthreads_and(finite) != 0;  // also orders the warp_amax writes
  float block_amax = 0.0f;
  for (int i = 0; i < static_cast<int>(blockDim.x / 32); ++i) block_amax = fmaxf(block_amax, warp_amax[i]);
  const Scaling s = block_scaling(block_amax, finite, pow2);
  for (int e = tid; e < kQuantBlock * kQuantBlock; e += blockDim.x) {
    const int r = r0 + e / kQuantBlock;
    const int k = k0 + e % kQuantBlock;
    if (r < rows && k < cols) {
      const size_t i = idx(r) * cols + k;
      codes[i] = encode(w[i], s.factor);
    }
  }
  if (tid == 0) scales[idx(rb) * L4 + kb] = s.scale;
}

// 32x32 byte tiles through shared memory; block (32, 8).
__global__ void transpose_bytes_kernel(const uint8_t* __restrict__ in, int rows, int cols, uint8_t* __restrict__ out) {
  __shared__ uint8_t tile[32][33];
  const int c0 = blockIdx.x * 32;
  const int r0 = blockIdx.y * 32;
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int r = r0 + i;
    const int c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[i][threadIdx.x] = in[idx(r) * cols + c];
  }
  __syncthreads();
  for (int i = threadIdx.y; i < 32; i += blockDim.y) {
    const int c = c0 + i;                // row of the output
    const int r = r0 + threadIdx.x;      // column of the output
    if (c < cols && r < rows) out[idx(c) * rows + r] = tile[threadIdx.x][i];
  }
}

// b's block (rb, kb) is t's block (kb, rb).
__global__ void transpose_block_scales_kernel(const float* __restrict__ scales, int row_blocks, int L, int L4,
                                              int t_L4, float* __restrict__ t_scales) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= row_blocks * L) return;
  const int rb = i / L;
  const int kb = i % L;
  t_scales[idx(kb) * t_L4 + rb] = scales[idx(rb) * L4 + kb];
}

__global__ void convert_bits_kernel(uint64_t first, uint64_t count, int kind, int satfinite, uint8_t* __restrict__ out) {
  const __nv_fp8_interpretation_t fmt = kind == 0 ? __NV_E4M3 : __NV_E5M2;
  const __nv_saturation_t sat = satfinite ? __NV_SATFINITE : __NV_NOSAT;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * blockDim.x;
  for (uint64_t i = static_cast<uint64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
    const float x = __uint_as_float(static_cast<uint32_t>(first + i));
    out[i] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(x, sat, fmt));
  }
}

__global__ void fill_uniform_kernel(float* __restrict__ x, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = idx(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += idx(gridDim.x) * blockDim.x) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ull * (i + 1);  // splitmix64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
    x[i] = lo + (hi - lo) * u;
  }
}

}  // namespace

void quantize_rowwise(const float* x, int rows, int cols, uint8_t* codes, float* scales, bool pow2_scales,
                      cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int L = k_blocks(cols);
  const long long tiles = static_cast<long long>(rows) * L;
  constexpr int kWarps = 8;
  const unsigned grid = static_cast<unsigned>((tiles + kWarps - 1) / kWarps);
  quantize_rowwise_kernel<<<grid, kWarps * 32, 0, stream>>>(x, rows, cols, L, codes, scales, pow2_scales);
  check_launch("quantize_rowwise");
}

void quantize_columnwise(const float* x, int rows, int cols, uint8_t* codes, float* scales, bool pow2_scales,
                         cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, 32)), static_cast<unsigned>(k_blocks(rows)));
  quantize_columnwise_kernel<<<grid, 256, 0, stream>>>(x, rows, cols, codes, scales, pow2_scales);
  check_launch("quantize_columnwise");
}

void quantize_blocks(const float* w, int rows, int cols, uint8_t* codes, float* scales, bool pow2_scales,
                     cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const int L4 = k_blocks_padded(cols);
  const int RB = ceil_div(rows, kQuantBlock);
  check(cudaMemsetAsync(scales, 0, sizeof(float) * idx(RB) * L4, stream), "quantize_blocks memset");
  const dim3 grid(static_cast<unsigned>(k_blocks(cols)), static_cast<unsigned>(RB));
  quantize_blocks_kernel<<<grid, 256, 0, stream>>>(w, rows, cols, L4, codes, scales, pow2_scales);
  check_launch("quantize_blocks");
}

void transpose_blocks(const uint8_t* codes, const float* scales, int rows, int cols, uint8_t* t_codes,
                      float* t_scales, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, 32)), static_cast<unsigned>(ceil_div(rows, 32)));
  transpose_bytes_kernel<<<grid, dim3(32, 8), 0, stream>>>(codes, rows, cols, t_codes);
  check_launch("transpose_blocks (data)");
  const int RB = ceil_div(rows, kQuantBlock);
  const int L = k_blocks(cols);
  const int t_L4 = k_blocks_padded(rows);
  check(cudaMemsetAsync(t_scales, 0, sizeof(float) * idx(L) * t_L4, stream),
        "transpose_blocks memset");
  transpose_block_scales_kernel<<<static_cast<unsigned>(ceil_div(RB * L, 256)), 256, 0, stream>>>(
      scales, RB, L, k_blocks_padded(cols), t_L4, t_scales);
  check_launch("transpose_blocks (scales)");
}

void convert_bit_patterns(uint64_t first, uint64_t count, Fp8Kind kind, bool satfinite, uint8_t* out,
                          cudaStream_t stream) {
  if (count == 0) return;
  convert_bits_kernel<<<grid_for(count, 256), 256, 0, stream>>>(first, count, kind == Fp8Kind::e4m3 ? 0 : 1,
                                                                satfinite ? 1 : 0, out);
  check_launch("convert_bit_patterns");
}

void fill_uniform(float* x, std::size_t n, uint64_t seed, float lo, float hi, cudaStream_t stream) {
  if (n == 0) return;
  fill_uniform_kernel<<<grid_for(n, 256), 256, 0, stream>>>(x, n, seed, lo, hi);
  check_launch("fill_uniform");
}

}  // namespace tandem::cuda
