#include "cli/bench_command.h"

#include <exception>
#include <vector>

#include "common/format.h"
#include "exec/cuda_backend.h"
#include "exec/gpu_probe.h"

namespace tandem {
namespace {

const char* kWhere = "tandem bench";

void validate(const BenchOptions& o) {
  if (o.what != "gemm" && o.what != "quant" && o.what != "moe-layer")
    throw_input_error("<command line>", "bench", "must be gemm, quant or moe-layer, got '" + o.what + "'");
  if (o.warmup < 0) throw_input_error("<command line>", "--warmup", "must be >= 0");
  if (o.iters < 1) throw_input_error("<command line>", "--iters", "must be >= 1");
  if (o.comm_sms < 0) throw_input_error("<command line>", "--comm-sms", "must be >= 0");
  if (o.rows < 0) throw_input_error("<command line>", "--rows", "must be >= 0 (0: the default)");
  if (o.cols < 0) throw_input_error("<command line>", "--cols", "must be >= 0 (0: the default)");
  if (o.what == "moe-layer" && o.cols != 0)
    throw_input_error("<command line>", "--cols", "is for `bench quant` (moe-layer uses hidden 7168)");
  if (o.what == "gemm" && (o.rows != 0 || o.cols != 0))
    throw_input_error("<command line>", "--rows/--cols", "are not used by `bench gemm` (fixed DeepGEMM shapes)");
}

// The device check, in every build: a clear reason, never a crash. Returns the loaded backend.
const CudaBackend& require_device() {
  const GpuProbe p = probe_gpus();
  if (!p.built_with_cuda)
    throw_input_error(kWhere, "", "this build has no CUDA backend (configured with TANDEM_CUDA=OFF or without nvcc); "
                                  "rebuild with nvcc and TANDEM_CUDA=ON on a Hopper GPU machine");
  if (!p.backend_loaded) throw_input_error(kWhere, "", p.detail);
  if (p.devices <= 0) {
    std::string why = p.detail;
    const std::string prefix = "no CUDA device: ";
    if (why.rfind(prefix, 0) == 0) why = why.substr(prefix.size());
    if (why.empty() || why == "no CUDA device") why = "0 devices";
    throw_input_error(kWhere, "", "no CUDA device present (cudaGetDeviceCount says: " + why + ")");
  }
  return *load_cuda_backend().backend;
}

nlohmann::json device_json(const cuda::BenchDevice& d) {
  return {{"name", d.name},
          {"sm_count", d.sm_count},
          {"compute_capability", strprintf("%d.%d", d.cc_major, d.cc_minor)},
          {"memory_gbytes", d.memory_gbytes},
          {"peak_hbm_gbytes_s", d.peak_hbm_gbytes_s},
          {"cublaslt_version", d.cublaslt_version}};
}

nlohmann::json calibration_head(const cuda::BenchDevice& d, const std::string& what) {
  return {{"name", "tandem-bench-" + what},
          {"gpu", d.name},
          {"source", strprintf("tandem bench %s: cuBLASLt %lld FP8 block-scaled GEMMs (DeepSeek 1x128/128x128 recipe) "
                               "and tandem's quantisation kernels, measured on %s (%d SMs)",
                               what.c_str(), d.cublaslt_version, d.name.c_str(), d.sm_count)}};
}

nlohmann::json run_gemm(const CudaBackend& gpu, const BenchOptions& o, const cuda::BenchDevice& dev, const cuda::BenchTiming& t, std::string& text) {
  const std::vector<cuda::GemmShape> shapes = {
      {4096, 2112, 7168}, {4096, 24576, 1536}, {4096, 7168, 16384}, {4096, 4096, 7168}, {4096, 7168, 2048}};
  const int target = o.comm_sms > 0 && o.comm_sms < dev.sm_count ? dev.sm_count - o.comm_sms : 0;
  const auto rows = gpu.bench_gemm(shapes, true, target, t);
  nlohmann::json results = nlohmann::json::array(), cal_rows = nlohmann::json::array(),
                 reduced = nlohmann::json::array();
  text += strprintf("FP8 block-scaled GEMM (cuBLASLt %lld) on %s, %d SMs; BF16 output, %d iterations\n",
                    dev.cublaslt_version, dev.name.c_str(), dev.sm_count, t.iters);
  text += strprintf("  %6s %6s %6s  %-18s %4s %10s %9s\n", "M", "N", "K", "mode", "SMs", "ms", "TFLOPS");
  for (const auto& r : rows) {
    results.push_back({{"m", r.shape.m}, {"n", r.shape.n}, {"k", r.shape.k}, {"mode", r.mode},
                       {"sm_count_target", r.sm_count_target}, {"ms", r.ms}, {"tflops", r.tflops}});
    text += strprintf("  %6d %6d %6d  %-18s %4d %10.4f %9.1f\n", r.shape.m, r.shape.n, r.shape.k, r.mode.c_str(),
                      r.sm_count_target > 0 ? r.sm_count_target : dev.sm_count, r.ms, r.tflops);
    if (r.mode != "vec128_blk128x128") continue;
    nlohmann::json row = {r.shape.m, r.shape.n, r.shape.k, r.tflops};
    (r.sm_count_target > 0 ? reduced : cal_rows).push_back(row);
  }
  nlohmann::json cal = calibration_head(dev, "gemm");
  cal["fp8_gemms"] = cal_rows;
  nlohmann::json out = {{"results", results}, {"calibration", cal}};
  if (target > 0) out["calibration_sm_count_target"] = {{"sm_count_target", target}, {"fp8_gemms", reduced}};
  return out;
}

nlohmann::json run_quant(const CudaBackend& gpu, const BenchOptions& o, const cuda::BenchDevice& dev, const cuda::BenchTiming& t, std::string& text) {
  const int rows = o.rows > 0 ? o.rows : 8192, cols = o.cols > 0 ? o.cols : 7168;
  const auto res = gpu.bench_quant(rows, cols, t);
  nlohmann::json results = nlohmann::json::array();
  text += strprintf("FP8 quantisation of an FP32 [%d, %d] tensor on %s (peak HBM %.0f GB/s)\n", rows, cols,
                    dev.name.c_str(), dev.peak_hbm_gbytes_s);
  double best = 0;
  for (const auto& r : res) {
    results.push_back({{"op", r.op}, {"rows", r.rows}, {"cols", r.cols}, {"ms", r.ms}, {"bytes", r.bytes},
                       {"gbytes_s", r.gbytes_s}});
    text += strprintf("  %-18s %10.4f ms %9.1f GB/s\n", r.op.c_str(), r.ms, r.gbytes_s);
    if (r.op != "transpose_blocks" && r.gbytes_s > best) best = r.gbytes_s;
  }
  nlohmann::json cal = calibration_head(dev, "quant");
  // The simulator's memory-bound kernels move bytes at this fraction of HBM bandwidth; the
  // quantisers are the best-measured streaming kernels here (the mean would penalise columnwise).
  if (dev.peak_hbm_gbytes_s > 0) cal["hbm_efficiency"] = best / dev.peak_hbm_gbytes_s;
  return {{"results", results}, {"calibration", cal}};
}

nlohmann::json run_moe(const CudaBackend& gpu, const BenchOptions& o, const cuda::BenchDevice& dev, const cuda::BenchTiming& t, std::string& text) {
  cuda::MoeLayerConfig c;
  if (o.rows > 0) c.rows = o.rows;
  nlohmann::json out = nlohmann::json::array();
  nlohmann::json cal = calibration_head(dev, "moe-layer");
  nlohmann::json grouped_rows = nlohmann::json::array();
  std::vector<int> targets = {0};
  if (o.comm_sms > 0 && o.comm_sms < dev.sm_count) targets.push_back(dev.sm_count - o.comm_sms);
  for (int target : targets) {
    c.sm_count_target = target;
    const cuda::MoeLayerResult r = gpu.bench_moe_layer(c, t);
    nlohmann::json grouped = nlohmann::json::array();
    for (const auto& g : r.grouped) {
      grouped.push_back({{"name", g.name}, {"groups", g.groups}, {"m", g.m}, {"n", g.n}, {"k", g.k}, {"ms", g.ms},
                         {"tflops", g.tflops}});
      if (target == 0) grouped_rows.push_back({g.groups, g.m, g.n, g.k, g.tflops});
    }
    out.push_back({{"hidden", c.hidden}, {"inter", c.inter}, {"local_experts", c.local_experts}, {"rows", c.rows},
                   {"rows_per_expert", r.rows_per_expert}, {"sm_count_target", target},
                   {"forward_ms", r.forward_ms}, {"backward_ms", r.backward_ms},
                   {"forward_gemm_flops", r.forward_gemm_flops}, {"backward_gemm_flops", r.backward_gemm_flops},
                   {"forward_tflops", r.forward_tflops}, {"backward_tflops", r.backward_tflops}, {"grouped_gemms", grouped}});
    text += strprintf("MoE layer slice (EP64 rank: %d experts x %d rows, hidden %d, width %d) on %s, %d SMs\n",
                      c.local_experts, r.rows_per_expert, c.hidden, c.inter, dev.name.c_str(),
                      target > 0 ? target : dev.sm_count);
    text += strprintf("  forward   %9.3f ms  %8.1f TFLOPS (GEMM FLOPs / pass time)\n", r.forward_ms, r.forward_tflops);
    text += strprintf("  backward  %9.3f ms  %8.1f TFLOPS\n", r.backward_ms, r.backward_tflops);
    for (const auto& g : r.grouped)
      text += strprintf("  %-14s %d x [%d, %d, %d] %9.3f ms %8.1f TFLOPS\n", g.name.c_str(), g.groups, g.m, g.n, g.k,
                        g.ms, g.tflops);
  }
  cal["fp8_grouped_gemms"] = grouped_rows;
  return {{"results", out}, {"calibration", cal}};
}

}  // namespace

Result<nlohmann::json> bench_command(const BenchOptions& o, std::string& text) {
  return catch_input_errors([&]() -> nlohmann::json {
    validate(o);
    const CudaBackend& gpu = require_device();
    try {
      const cuda::BenchDevice dev = gpu.bench_device();
      const cuda::BenchTiming t{o.warmup, o.iters};
      nlohmann::json j;
      if (o.what == "gemm") j = run_gemm(gpu, o, dev, t, text);
      else if (o.what == "quant") j = run_quant(gpu, o, dev, t, text);
      else j = run_moe(gpu, o, dev, t, text);
      j["bench"] = o.what;
      j["device"] = device_json(dev);
      j["timing"] = {{"warmup", t.warmup}, {"iters", t.iters}};
      return j;
    } catch (const InputException&) {
      throw;
    } catch (const std::exception& e) {
      // CUDA / cuBLAS failures (CudaError, LtError) carry the runtime's status string.
      throw_input_error(kWhere, o.what, std::string("CUDA backend failed: ") + e.what());
    }
  });
}

}  // namespace tandem
