// Calibration from measured traces — what `tandem calibrate` does.
//
// A profiler trace of real training (PyTorch's Chrome trace JSON: kernels, their launches, the
// CPU phase annotations) or tandem's own `execute --trace` is read (common/chrome_trace.h), each
// GPU kernel classified into tandem's op vocabulary by an editable rules file and attributed to
// its phase (sim/kernel_rules.h). A phase is one of the Program's task kinds ("attn(F)" or
// "attn_f" is attn_f, "combine(B)" is combine_b, ...); each occurrence of a phase is one
// instance of that task — DeepSeek's trace holds four of each, one per MoE layer.
//
// The scenario gives the shapes: the task kinds' work on one of its layers (an MoE layer when the
// trace has all-to-all phases). Then, from kernel-level figures only:
//  - GEMMs: the trace's GEMM kernels of each task kind matched to the task's GEMMs of the same
//    class (dense FP8, grouped FP8, FP8 weight-gradient, BF16), largest FLOPs to longest kernel;
//    each match a measured row (TFLOP/s at its shape, on the SMs the persistent kernels' grids
//    show);
//  - fused attention: forward and backward efficiency against the BF16 peak, on those SMs;
//  - a kernel's floor (median duration of the kernels with less than one wave of CTAs) and the
//    gap between consecutive kernels on the busiest compute stream (median idle gap, when the
//    stream is fed);
//  - each memory-kernel family's fraction of HBM bandwidth: the efficiency at which the task
//    kinds' kernels of that family take, together, the time the trace's kernels of that family
//    took;
//  - the all-to-all: per kind the notify/layout kernels' time and the transfer kernel's time
//    over the alone-case model (DeepEP's own benchmark through tandem's network model): the
//    in-training factor;
//  - a tandem trace (whole tasks, no kernels): per compute task kind, the ratio of the measured
//    time to the model's (task-level: the executor's own tasks on the GPU it ran on).
// Compute-phase kernels are charged their share of the GPU's compute wall time (kernels that
// overlap on two compute streams split it), so the figures add up to the time the phase took.
//
// The result is an overlay (sim/compute_cost.h) with its provenance (input files, sha256, kernel
// counts), and the evidence: per task kind the measured time beside the model's before and after
// the calibration, per kernel family and per GEMM the measurement and the parameter it gives,
// the classified share and every unclassified kernel name.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "common/chrome_trace.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"
#include "sim/compute_cost.h"
#include "sim/kernel_rules.h"

namespace tandem {

struct KindFigure {
  // Per op class (GEMM classes, attention, memory-kernel families, gaps): measured charged µs
  // and the calibrated model's µs, per instance — where a kind's time goes and where the model
  // misses it.
  struct Part {
    double measured_us = 0, model_us = 0;
  };
  std::map<std::string, Part> parts;
  std::string kind;            // task kind
  int instances = 0;           // phase occurrences measured
  int kernels = 0;             // per instance
  double span_us = 0;          // per instance: first kernel start to last kernel end
  double measured_us = 0;      // per instance: its kernels and the launch gaps between them
                               // (idle gaps of 20 µs or more are waits: the schedule's time)
  double busy_us = 0;          // per instance: its kernels' charged time
  double model_before_us = 0;  // the model with the base calibration
  double model_after_us = 0;   // with the derived overlay laid over it
};

struct FamilyFigure {
  std::string family;
  int trace_kernels = 0;       // per instance set (all kinds of one layer)
  double measured_us = 0;      // per layer
  int model_launches = 0;      // the model's kernels of this family, per layer
  double model_bytes = 0;
  double model_before_us = 0;
  double efficiency = 0;       // the derived fraction of HBM bandwidth (0: not derived)
  std::string note;
};

struct GemmFigure {
  std::string kind, name, op_class;
  GemmMeasurement row;         // the derived row
  int trace_kernels = 0;       // matched per instance
  double measured_us = 0;      // per instance
  double model_before_us = 0;  // base calibration, same SMs
};

struct A2AFigure {
  std::string kind;
  double notify_us = 0, transfer_us = 0, other_us = 0;  // per instance, measured
  double alone_us = 0;         // the transfer alone (DeepEP benchmark through the network model)
  double factor = 0;           // transfer / alone
};

struct CalibrationDerivation {
  Calibration result;          // the overlay
  std::string scenario, block; // shapes from
  std::vector<std::string> inputs;  // "file (sha256 ..., N kernels)"
  std::vector<double> trace_span_us;  // per input: first GPU event start to last end
  double kernel_us = 0, classified_us = 0;
  int kernels = 0, kernels_classified = 0;
  std::vector<Classification::Unmatched> unclassified;
  std::map<std::string, std::pair<int, double>> by_op;  // op class -> kernels, µs (all inputs)
  std::vector<KindFigure> kinds;
  std::vector<FamilyFigure> families;
  std::vector<GemmFigure> gemms;
  std::vector<A2AFigure> all_to_all;
  double kernel_floor_us = -1, launch_gap_us = -1;
  int64_t gemm_sms_measured = 0;  // the persistent GEMM kernels' grid
  std::vector<std::string> notes;  // what did not match, and why

  std::string text() const;         // the report a person reads
  std::string yaml() const;         // the overlay file, with its provenance and evidence
};

// Phase names as traces write them ("attn(F)", "dispatch(B)", "mlp_w", ...) to task kinds.
bool phase_task_kind(const std::string& phase, TaskKind* out);

// The calibration an overlay is derived against: the scenario's `calibration:` files without
// overlays of their own (an overlay derived against itself would reconcile nothing).
Result<Calibration> base_calibration(const Scenario& s);

// Derives the overlay from one or more traces (all of the same scenario shape). `base` is the
// calibration the scenario uses without the overlay. Input errors (no phase matches a task kind,
// a trace of another shape) come back as values.
Result<CalibrationDerivation> derive_calibration(const Scenario& s, const Calibration& base,
                                                 const std::vector<ChromeTrace>& traces, const KernelRules& rules);

}  // namespace tandem
