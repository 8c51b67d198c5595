// `tandem bench gemm|quant|moe-layer [--json] [--iters N] [--warmup N] [--comm-sms N] [--rows N] [--cols N]`
//
// Microbenchmarks of the executor's CUDA backend (exec/backends/cuda/bench.h) on the local GPU:
//   gemm       cuBLASLt FP8 block-scaled GEMM TFLOPS at M = 4096 and DeepGEMM's (N, K) shapes, in
//              the fprop/dgrad mode (VEC128 x BLK128x128) and the wgrad mode (VEC128 x VEC128),
//              and again with CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET = SMs - comm SMs;
//   quant      GB/s of the 1x128 rowwise, 1x128 columnwise and 128x128 quantisations (and the
//              exact 2-D transpose) of an FP32 [rows, cols] tensor (default 8192 x 7168);
//   moe-layer  one DeepSeek-V3 MoE layer as an EP64 rank sees it (hidden 7168, 4 local experts of
//              width 2048, 32,768 token-expert rows), forward and backward: time and GEMM TFLOPS.
// The JSON has a `calibration` section shaped like sim/calibration/*.yaml (fp8_gemms rows
// [m, n, k, tflops], fp8_grouped_gemms rows [groups, m, n, k, tflops], hbm_efficiency).
//
// Without a CUDA device, or in a build without the CUDA backend, it returns an InputError that
// says so (the CLI prints it and exits 2); options are validated first in every build.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct BenchOptions {
  std::string what;   // gemm | quant | moe-layer
  bool json = false;
  int warmup = 3;
  int iters = 20;
  int comm_sms = 20;  // SMs left to communication: SM_COUNT_TARGET = SMs - comm_sms (0: no such run)
  int rows = 0;       // quant: rows (default 8192); moe-layer: token-expert rows (default 32768)
  int cols = 0;       // quant: cols (default 7168)
};

Result<nlohmann::json> bench_command(const BenchOptions& o, std::string& text);

}  // namespace tandem
