// KernelRules: which tandem op class each GPU kernel of a measured trace counts as, decided by an
// editable rules file (sim/calibration/kernel-rules.yaml documents the schema), so calibration
// never hard-codes a library's kernel names.
//
// classify() attributes every GPU event of a ChromeTrace to
//  - a phase: the innermost (shortest) "user_annotation" range, of any thread of the launching
//    process, that encloses the kernel's launch time (annotations matched by ignore_annotations
//    skipped) — the autograd thread launches inside the main thread's phases, so time, not thread,
//    decides; phase_index is the occurrence number of that annotation name in time order. A
//    tandem task's phase is its phase_hint (the task kind), its index the occurrence of that kind
//    on its device.
//  - a context: the "cpu_op"/"user_annotation" ranges of the launching thread that enclose the
//    launch, outermost first, joined by " > " (ignored annotations left out), e.g.
//    "attn(F) > RopeLoraFlashAttnVarlenFunc > aten::copy_".
//  - an op class: the first rule that matches (rules are tried in file order).
// A range encloses time t when start <= t <= start + dur.
//
// Nothing is dropped: every unclassified kernel name is listed with its count and time.
#pragma once

#include <array>
#include <cstdint>
#include <limits>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

#include "common/chrome_trace.h"
#include "common/input_error.h"

namespace tandem {

// The op classes a kernel can count as: the vocabulary the calibration speaks.
inline constexpr std::array<std::string_view, 24> kKernelOpClasses = {
    "gemm_fp8",          // dense FP8 GEMM (fprop, dgrad)
    "gemm_fp8_grouped",  // grouped FP8 GEMM over the local experts
    "gemm_fp8_wgrad",    // FP8 weight-gradient GEMM, accumulating into FP32
    "gemm_bf16",         // BF16 GEMM (router gate, output head in the bf16 recipe)
    "attention_fwd",     // fused attention forward
    "attention_bwd",     // fused attention backward, with its pre/post-processing kernels
    "norm",              // RMSNorm (fused with the residual add), forward and backward
    "rope",              // rotary position embedding
    "copy",              // layout copies, memcpy
    "cast",              // FP8 quantise/dequantise, transposes of FP8 data or scales
    "permute",           // routed tokens to/from expert-major rows: expand, mapping, counting, reduce
    "swiglu",            // SwiGLU forward/backward (also when fused with a cast)
    "router",            // gate scores, top-k, balance statistics, their backward
    "elementwise",       // residual adds/scales, fills, gradient accumulation
    "a2a_notify",        // all-to-all layout/notify kernels (DeepEP)
    "a2a_dispatch",      // all-to-all dispatch
    "a2a_combine",       // all-to-all combine
    "embedding",         // token embedding forward/backward
    "loss",              // output loss (cross-entropy)
    "optimizer",         // optimizer step (AdamW)
    "pp_comm",           // pipeline send/recv
    "dp_comm",           // data-parallel reduce-scatter / all-gather
    "task",              // a whole tandem compute task (tandem traces)
    "task_comm",         // a whole tandem communication task (tandem traces)
};

bool is_kernel_op_class(std::string_view op);

// One rule: every condition set must hold; unset conditions match anything. Regexes are ECMAScript
// and match anywhere in the text (anchor with ^ and $ to match whole). They see at most the first
// 4096 characters of a name or context (std::regex recurses per character; see kernel_rules.cpp).
struct KernelRule {
  std::string op;
  std::optional<std::regex> name, phase, context, not_context;  // nullopt: unset
  // Total CTAs (grid x*y*z). Events without a grid (memcpy, memset, tandem tasks) count 0 CTAs:
  // a rule with min_grid >= 1 never matches them.
  int64_t min_grid = 0, max_grid = std::numeric_limits<int64_t>::max();
  std::string category;  // empty: any; else only events of this category ("gpu_memcpy", ...)
  std::string text;      // where and how the rule was written, for messages: "rules[3] {op: ...}"
};

struct KernelRules {
  std::string file, sha256;
  std::string name;
  std::vector<std::regex> ignore_annotations;
  std::vector<std::string> comm_ops;  // op classes that run on SMs of their own (communication)
  std::vector<KernelRule> rules;

  bool is_comm(std::string_view op) const;
};

// Strict: a missing `rules` list, an unknown key, an unknown op class, a regex that does not
// compile, an empty or inverted grid range -> InputError `file: key: reason`.
Result<KernelRules> load_kernel_rules(const std::string& path);
// The shipped rules, sim/calibration/kernel-rules.yaml, from the copy built into the binary
// (sim/shipped_data.h); named "sim/calibration/kernel-rules.yaml (shipped)".
KernelRules default_kernel_rules();

struct ClassifiedKernel {
  TraceKernel kernel;
  std::string op;     // "" when unclassified
  std::string phase;  // "" when no annotation encloses the launch (and no phase_hint)
  int phase_index = -1;
  std::string context;
  // The GPU time this kernel is charged with. Compute (every op not in comm_ops, unclassified
  // included): at each instant the device's wall time is split equally among the compute kernels
  // running on it then, on any stream, so the compute kernels' effective times sum exactly to the
  // length of the union of their intervals. Communication kernels run on SMs of their own: their
  // whole duration.
  double effective_us = 0;
};

struct Classification {
  std::vector<ClassifiedKernel> kernels;  // every GPU event, in start order
  struct Unmatched {
    std::string name;
    int count = 0;
    double us = 0;
  };
  std::vector<Unmatched> unclassified;  // every unclassified name, most time first
  double total_us = 0, classified_us = 0;  // sums of durations
  int kernels_classified = 0, kernels_total = 0;
};

Classification classify(const ChromeTrace& t, const KernelRules& r);

// The first rule that matches, or nullptr (exposed for tests and messages).
const KernelRule* match_rule(const KernelRules& r, const TraceKernel& k, const std::string& phase,
                             const std::string& context);

}  // namespace tandem
