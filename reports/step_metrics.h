// Step metrics: a training step's figures — time per GPU and per rank by category, per task kind,
// MFU, cost, memory, routing — from where its GPUs' time went (GpuTime, from either engine) and
// the scenario. `tandem simulate` and `tandem execute` both report through here; a trace file
// read back (account_trace) gives the same figures as the run that wrote it.
//
// Averages are over the GPUs accounted: every simulated GPU for a simulation (the replicated tier
// simulates one per pipeline rank: every replica behaves alike), every traced GPU for a trace.
// The step time is the latest end of any of them: a GPU that finishes early waits for the next
// step, and that wait is bubble.
#pragma once

#include <array>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/gpu_time.h"
#include "common/trace.h"
#include "scenarios/program.h"
#include "scenarios/scenario.h"

namespace tandem {

// One rank's (or the average GPU's) step by category; compute_by_slot + exposed + bubble = step.
struct StepSplit {
  double compute_busy = 0;
  std::array<double, kSlotClasses> compute_by_slot{};  // indexed by SlotClass
  double exposed_comm = 0;
  double bubble = 0;
};

struct RankTimes {
  int rank = 0;
  int gpus = 0;  // GPUs of this rank accounted
  StepSplit split;
};

struct StepTimes {
  double step_time_s = 0;
  int gpus = 0;  // accounted
  StepSplit split;                                 // per GPU, averaged
  std::map<std::string, double> seconds_by_kind;   // per GPU, averaged; both streams
  std::vector<RankTimes> ranks;                    // every pipeline rank with a GPU accounted
};

// Averages GPUs' accounts (in the order given). step_time_s <= 0: the latest GpuTime::end().
StepTimes step_times(const std::vector<GpuTime>& gpus, double step_time_s = 0);

// Folds a trace's events per GPU, in GPU order (each sealed). Slots name their class through the
// program (the scenario's, which the trace must come from: checked by the caller).
std::vector<GpuTime> account_trace(const Trace& t, const Program& p);

struct RoutingFigures {
  std::string model;  // "balanced", "skewed" or "measured"
  double skew = 0;
  std::string histogram;  // measured: the histogram file
  uint64_t seed = 0;
  double max_gpu_load = 1, mean_max_gpu_load = 1, max_expert_load = 1;
  std::vector<double> member_load_mean;     // per EP member: rows over its balanced share, mean over MoE layers
  std::vector<double> member_load_busiest;  // ... in the layer with the busiest member
  int busiest_layer = -1;
};

struct StepMetrics {
  StepTimes times;
  int64_t gpus = 0;  // in the job (the scenario's), not only those accounted
  double tokens_per_step = 0, tokens_per_s_per_gpu = 0;
  double mfu_causal = 0, mfu_noncausal = 0;  // against the card's BF16 peak
  double gpu_hours_per_trillion_tokens = 0;
  double training_tokens = 0, days_for_training_tokens = 0, cost_usd_for_training_tokens = 0;
  double price_per_gpu_hour = 0;
  std::vector<double> memory_per_rank_bytes;
  struct MemoryParts {
    double weights = 0, grads = 0, optimizer = 0, activations = 0;
  };
  std::vector<MemoryParts> memory_parts_per_rank;  // what memory_per_rank_bytes adds up
  double memory_peak_bytes = 0, hbm_bytes = 0;
  RoutingFigures routing;
};

// Throws InputException (--tokens) when training_tokens is not a positive number.
StepMetrics step_metrics(const StepTimes& times, const Scenario& s, const Workload& w, const StagePartition& part,
                         double training_tokens);

// The figures as text lines (the body of `tandem simulate`'s output) and as JSON keys (merged
// into the command's JSON). `planning`: include MFU, cost, memory (false for a CPU execution,
// where a GPU's peak means nothing).
std::string metrics_text(const StepMetrics& m, bool planning);
std::string times_text(const StepTimes& t);
nlohmann::json metrics_json(const StepMetrics& m, bool planning);
nlohmann::json times_json(const StepTimes& t);

}  // namespace tandem
