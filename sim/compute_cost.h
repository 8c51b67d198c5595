// ComputeCostModel: how long a pass of an op takes on one GPU, kernel by kernel, from kernel-level
// data only (a Calibration).
//
// GEMMs: each shape's time comes from a table of measured kernels — DeepGEMM's published H800
// tables, our own `tandem bench`, and the kernels of a profiler trace (`tandem calibrate`), which
// also gives weight-gradient GEMMs rows of their own. A shape in the table takes exactly its
// measured time; any other takes the time of the nearest row of the same kind (weight gradient
// or forward-type; grouped or dense; distance in log M, log N, log K) scaled by the ratio of the
// two shapes' roofline times max(FLOPs/peak, bytes/HBM). A row measured on fewer SMs than the GPU
// has (DeepSeek's GEMMs run as persistent kernels on the SMs communication leaves them) scales
// linearly to the SMs the GEMM is given.
//
// Fused attention runs at a measured fraction of the BF16 peak (on `attention_sms` SMs).
// Memory-bound kernels stream their bytes at their family's measured fraction of HBM bandwidth,
// never faster than a measured floor per launch (a tiny kernel still costs its launch) nor than
// the CUDA cores' arithmetic; every kernel launched also costs a measured gap on its stream.
//
// All-to-all parameters (DeepEP as measured alone and in training) live here too, so one file
// holds everything kernel- and link-level a simulation uses; the engine applies them.
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/input_error.h"
#include "common/signed_index.h"
#include "models/workload.h"
#include "topologies/cluster_card.h"

namespace tandem {

struct GemmMeasurement {
  Dtype dtype = Dtype::fp8_e4m3;     // fp8_e4m3 or bf16
  std::optional<GemmRole> role;      // unset: a forward-type kernel (fprop and dgrad alike)
  int64_t groups = 1;                // > 1: grouped GEMM (or per-group kernels), `m` rows per group
  int64_t m = 0, n = 0, k = 0;
  double tflops = 0;
  int64_t sms = 0;                   // SMs it ran on; 0: the whole GPU
  std::string source;                // where the row comes from (file, kernels)

  bool wgrad() const { return role && *role == GemmRole::wgrad; }
};

// The expert-parallel all-to-all's kinds, as the Program names its tasks.
enum class A2AKind { dispatch_f, dispatch_b, combine_f, combine_b };
constexpr int kA2AKinds = 4;
const char* to_string(A2AKind k);

// DeepEP's normal kernels, from two kinds of kernel-level measurement:
//  - alone (DeepEP's own benchmark, no other work on the GPU): the fraction of the IB and NVLink
//    line rates its transfers reach, and the SM count from which more SMs no longer help (fewer
//    SMs drive proportionally less bandwidth);
//  - in training (a profiler trace of the overlapped schedule): per kind, the notify/layout
//    kernels before each transfer (which also wait for the slowest member of the EP group) and
//    how much longer the transfer kernel takes than alone while GEMMs share the GPU.
struct AllToAllCalibration {
  double ib_efficiency = 0;       // 0: unset (an overlay that does not measure it)
  double nvlink_efficiency = 0;
  int64_t saturating_sms = 0;     // 0: unset
  std::array<double, kA2AKinds> notify_us{-1, -1, -1, -1};           // < 0: unset
  std::array<double, kA2AKinds> in_training_factor{0, 0, 0, 0};      // 0: unset
};

struct Calibration {
  std::string name;
  std::string file;
  bool from_bench = false;  // a `tandem bench --json` output: only what it measured (0: absent)
  bool overlay = false;     // a partial calibration (e.g. `tandem calibrate`'s) laid over a complete one
  std::vector<GemmMeasurement> gemms;  // FP8 and BF16 rows
  double bf16_gemm_efficiency = 0;     // BF16 GEMMs when no BF16 row is near
  double attention_fwd_efficiency = 0;
  double attention_bwd_efficiency = 0;
  int64_t attention_sms = 0;           // SMs the attention efficiencies were measured on (0: all)
  double hbm_efficiency = 0;           // memory kernels of a family without its own figure
  std::array<double, kKernelFamilies> family_efficiency{};  // 0: hbm_efficiency
  double kernel_floor_us = -1;         // < 0: unset
  double launch_gap_us = -1;           // < 0: unset
  AllToAllCalibration all_to_all;
  // Task-level measurements (tandem's own executor traces: whole tasks, no kernels): per compute
  // task kind, the measured time over the kernel model's. Applied after the kernel model.
  std::map<std::string, double> task_time_scale;
  std::vector<std::string> provenance;  // one line per input the figures come from

  double family_hbm_efficiency(KernelFamily f) const {
    const double e = family_efficiency[idx(f)];
    return e > 0 ? e : hbm_efficiency;
  }
};

// Loads a calibration file (YAML: complete, or `overlay: true` for a partial one) or the output
// of `tandem bench gemm|quant|moe-layer --json` (its "calibration" section: measured rows and
// efficiencies only). Errors name the file and the key.
Result<Calibration> load_calibration(const std::string& path);
// The same from text; `source` names it in errors.
Result<Calibration> load_calibration_text(const std::string& text, const std::string& source);

// The shipped complete calibration, sim/calibration/h800-deepgemm.yaml, from the copy built into
// the binary (sim/shipped_data.h).
Calibration default_calibration();

// `top` laid over `base`: its measured GEMM rows replace the base's rows of the same dtype, role,
// shape and SM count (or join the table); every figure it sets replaces the base's.
Calibration overlay(const Calibration& base, const Calibration& top);

// The calibration a simulation uses: the files in order (the first complete, or the shipped
// sim/calibration/h800-deepgemm.yaml, built into the binary, when the first is an overlay or none
// is given), each later one laid over the result. Throws InputException naming the file.
Calibration resolve_calibration(const std::vector<std::string>& files);

class ComputeCostModel {
 public:
  ComputeCostModel(const GpuSpec& gpu, Calibration cal);

  // Seconds for one GEMM (all `count` groups) given `sms` SMs (0: the whole GPU).
  double gemm_seconds(const Gemm& g, int64_t sms = 0) const;
  double attention_seconds(double flops, bool backward, int64_t sms = 0) const;
  double memory_kernel_seconds(const MemoryKernel& k) const;
  // Seconds for one op's pass: its kernels in sequence on one stream, with the gap each launch
  // costs. `backward` selects the attention backward efficiency. `memory_sms` > 0: the memory
  // kernels are confined to that many SMs (a comm stream's kernels run on the communication
  // SMs while GEMMs hold the rest) and stream proportionally less.
  double pass_seconds(const PassCost& p, bool backward, int64_t sms = 0, int64_t memory_sms = 0) const;
  // The row a GEMM given `sms` SMs is timed from (nullptr: none of its dtype).
  const GemmMeasurement* nearest(const Gemm& g, int64_t sms) const;

  const Calibration& calibration() const { return cal_; }
  const GpuSpec& gpu() const { return gpu_; }

 private:
  double roofline_seconds(const Gemm& g) const;

  GpuSpec gpu_;
  Calibration cal_;
};

}  // namespace tandem
