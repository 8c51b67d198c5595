// Microbenchmarks of the CUDA backend (`tandem bench gemm|quant|moe-layer`), timed with CUDA
// events on one stream after warm-up, on device-generated uniform data quantised by our kernels.
// Results are plain structs; cli/bench_command.cpp turns them into text/JSON. GPU only: every
// function throws CudaError/LtError on a machine without a device.
#pragma once

#include <string>
#include <vector>

namespace tandem::cuda {

struct BenchDevice {
  std::string name;
  int sm_count = 0;
  int cc_major = 0, cc_minor = 0;
  double memory_gbytes = 0;
  double peak_hbm_gbytes_s = 0;  // 2 * memory clock * bus width (from the device attributes)
  long long cublaslt_version = 0;
};
BenchDevice bench_device();

struct BenchTiming {
  int warmup = 3;
  int iters = 20;
};

struct GemmShape {
  int m = 0, n = 0, k = 0;
};

struct GemmBenchRow {
  GemmShape shape;
  std::string mode;     // "vec128_blk128x128" (fprop/dgrad) or "vec128_vec128" (wgrad)
  int sm_count_target = 0;  // 0: all SMs
  double ms = 0;        // per GEMM
  double tflops = 0;    // 2 M N K / time
};
// Each shape in each requested mode (BF16 output), with all SMs and, when sm_count_target > 0,
// again with CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET = sm_count_target (fprop mode).
std::vector<GemmBenchRow> bench_gemm(const std::vector<GemmShape>& shapes, bool include_wgrad_mode,
                                     int sm_count_target, const BenchTiming& t);

struct QuantBenchRow {
  std::string op;  // "rowwise_1x128", "columnwise_1x128", "blocks_128x128", "transpose_blocks"
  int rows = 0, cols = 0;
  double ms = 0;
  double bytes = 0;  // bytes read + written (FP32 in, E4M3 + FP32 scales out)
  double gbytes_s = 0;
};
std::vector<QuantBenchRow> bench_quant(int rows, int cols, const BenchTiming& t);

struct MoeLayerConfig {
  int hidden = 7168;
  int inter = 2048;        // expert width; GEMM1 is the fused gate|up projection [2 inter, hidden]
  int local_experts = 4;
  int rows = 32768;        // token-expert rows on this rank, split evenly, each segment 128-aligned
  int sm_count_target = 0;
};
struct MoeLayerResult {
  MoeLayerConfig config;
  int rows_per_expert = 0;
  double forward_ms = 0, backward_ms = 0;
  double forward_gemm_flops = 0, backward_gemm_flops = 0;
  double forward_tflops = 0, backward_tflops = 0;  // GEMM FLOPs over the whole pass time
  // The per-expert GEMM loops alone, as grouped-GEMM calibration rows.
  struct Grouped {
    std::string name;
    int groups = 0, m = 0, n = 0, k = 0;
    double ms = 0, tflops = 0;
  };
  std::vector<Grouped> grouped;
};
// Forward: per expert quantise x 1x128, GEMM1 (x·W1ᵀ, FP32 out), SwiGLU, quantise, GEMM2 (BF16 out);
// weights quantised 128x128 (and transposed for dgrad) inside the forward time. Backward:
// quantise dy rowwise + columnwise, dgrad2, wgrad2, SwiGLU backward, quantise dgu both ways +
// x columnwise, dgrad1, wgrad1 (FP32 weight gradients).
MoeLayerResult bench_moe_layer(const MoeLayerConfig& c, const BenchTiming& t);

}  // namespace tandem::cuda
