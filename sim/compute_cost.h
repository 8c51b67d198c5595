// ComputeCostModel: how long a task's compute takes on one GPU, from kernel-level data only.
//
// GEMMs: FP8 shapes come from a calibration table of measured kernels (initially DeepGEMM's H800
// tables). A shape in the table takes exactly its measured time; any other shape takes the time
// of the nearest table shape (distance in log M, log N, log K; grouped GEMMs matched to grouped
// rows) scaled by the ratio of the two shapes' ideal roofline times max(FLOPs/peak, bytes/HBM).
// BF16 GEMMs and fused attention run at a stated fraction of the BF16 peak; memory-bound kernels
// move their bytes at a stated fraction of HBM bandwidth.
//
// SM sharing: while communication kernels hold `comm_sms` SMs, overlapping compute runs on the
// rest: tensor-core throughput scales by (sms - comm_sms) / sms; HBM-bound kernels are assumed to
// still reach the same bandwidth (a 15% smaller SM pool saturates HBM).
#pragma once

#include <string>
#include <vector>

#include "common/input_error.h"
#include "models/workload.h"
#include "topologies/cluster_card.h"

namespace tandem {

struct GemmMeasurement {
  int64_t groups = 1;  // > 1: grouped GEMM, `m` rows per group
  int64_t m = 0, n = 0, k = 0;
  double tflops = 0;
};

struct Calibration {
  std::string name;
  std::string file;
  std::vector<GemmMeasurement> fp8;  // dense and grouped rows
  double bf16_gemm_efficiency = 0;
  double attention_fwd_efficiency = 0;
  double attention_bwd_efficiency = 0;
  double hbm_efficiency = 0;
  bool from_bench = false;  // a `tandem bench --json` output: only what it measured (0: absent)
};

// Loads a calibration file (YAML, complete) or the output of `tandem bench gemm|quant|moe-layer
// --json` (its "calibration" section: measured rows and efficiencies only).
Result<Calibration> load_calibration(const std::string& path);

// `top` laid over `base`: its measured GEMM rows replace the base's rows of the same shape (or
// join the table), its efficiencies replace the base's where it has them.
Calibration overlay(const Calibration& base, const Calibration& top);

class ComputeCostModel {
 public:
  ComputeCostModel(const GpuSpec& gpu, Calibration cal);

  // Seconds for one GEMM (all `count` groups) with `sm_fraction` of the SMs.
  double gemm_seconds(const Gemm& g, double sm_fraction = 1.0) const;
  // Seconds for one op's pass: its GEMMs, fused attention and memory-bound bytes, in sequence.
  // `backward` selects the attention backward efficiency.
  double pass_seconds(const PassCost& p, bool backward, double sm_fraction = 1.0) const;

  const Calibration& calibration() const { return cal_; }

 private:
  double roofline_seconds(const Gemm& g) const;
  const GemmMeasurement* nearest(const Gemm& g) const;

  GpuSpec gpu_;
  Calibration cal_;
};

}  // namespace tandem
