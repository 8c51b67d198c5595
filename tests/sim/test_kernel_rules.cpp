#include <unistd.h>

#include <catch2/catch.hpp>

#include "../task_event.h"
#include "../temp_dir.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <string>

#include "common/chrome_trace.h"
#include "common/trace.h"
#include "sim/kernel_rules.h"
#include "tests/test_paths.h"

using namespace tandem;
using tandem::test::TempDir;
namespace fs = std::filesystem;

namespace {


const std::string kShippedRules = "sim/calibration/kernel-rules.yaml";

KernelRules shipped_rules() {
  Result<KernelRules> r = load_kernel_rules(test::repo(kShippedRules));
  INFO((r.ok() ? "" : r.error().message()));
  REQUIRE(r.ok());
  return r.value();
}

ChromeTrace excerpt() {
  Result<ChromeTrace> t = read_chrome_trace(test::repo("tests/data/train-excerpt.json"));
  INFO((t.ok() ? "" : t.error().message()));
  REQUIRE(t.ok());
  return t.value();
}

std::string file_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

const ClassifiedKernel& by_correlation(const Classification& c, int64_t correlation) {
  for (const ClassifiedKernel& k : c.kernels)
    if (k.kernel.correlation == correlation) return k;
  FAIL("no kernel with correlation " << correlation);
  return c.kernels.front();
}

// Sum of durations of the events whose name contains `part` (and, if given, in `phase`): the
// expected totals, from the trace alone, independent of the rules.
double us_named(const ChromeTrace& t, const Classification& c, const std::string& part, const std::string& phase = "") {
  double us = 0;
  for (size_t i = 0; i < t.kernels.size(); ++i)
    if (t.kernels[i].name.find(part) != std::string::npos && (phase.empty() || c.kernels[i].phase == phase))
      us += t.kernels[i].dur_us;
  return us;
}

double us_of(const Classification& c, const std::string& op, const std::string& phase = "") {
  double us = 0;
  for (const ClassifiedKernel& k : c.kernels)
    if (k.op == op && (phase.empty() || k.phase == phase)) us += k.kernel.dur_us;
  return us;
}

InputError rules_error(const TempDir& dir, const std::string& text) {
  Result<KernelRules> r = load_kernel_rules(dir.write("rules.yaml", text));
  REQUIRE_FALSE(r.ok());
  return r.error();
}

using test::task;

TraceKernel gpu_kernel(const std::string& name, int64_t stream, double start, double dur, int device = 0) {
  TraceKernel k;
  k.name = name;
  k.category = "kernel";
  k.stream = stream;
  k.device = device;
  k.start_us = start;
  k.dur_us = dur;
  k.grid = {132, 1, 1};
  return k;
}

}  // namespace

TEST_CASE("kernel rules: the shipped file loads", "[calibrate]") {
  const KernelRules r = shipped_rules();
  CHECK(r.name == "deepseek-v3-h800-and-tandem");
  CHECK(r.sha256.size() == 64);
  CHECK(r.ignore_annotations.size() == 2);
  CHECK(r.is_comm("a2a_dispatch"));
  CHECK(r.is_comm("task_comm"));
  CHECK_FALSE(r.is_comm("gemm_fp8"));
  CHECK(r.rules.size() > 30);
  for (const KernelRule& rule : r.rules) CHECK(is_kernel_op_class(rule.op));
  CHECK_THAT(r.rules.front().text, Catch::StartsWith("rules[0] {"));
}

TEST_CASE("kernel rules: the built-in copy is the shipped file", "[calibrate]") {
  const KernelRules built_in = default_kernel_rules();
  CHECK(built_in.sha256 == shipped_rules().sha256);
  CHECK(built_in.file == "sim/calibration/kernel-rules.yaml (shipped)");
  CHECK(built_in.rules.size() == shipped_rules().rules.size());
}

TEST_CASE("kernel rules: the DeepSeek excerpt classifies completely, by phase and context", "[calibrate]") {
  const ChromeTrace t = excerpt();
  const Classification c = classify(t, shipped_rules());

  REQUIRE(c.kernels.size() == 133);
  CHECK(c.kernels_total == 133);
  CHECK(c.kernels_classified == 133);
  CHECK(c.unclassified.empty());
  CHECK(c.total_us == 21982);
  CHECK(c.classified_us == c.total_us);

  // Op totals against the kernels' own durations (names from the file, not from the rules).
  CHECK(us_of(c, "attention_fwd") == 1248);  // the one FlashAttention-3 forward of attn(F)
  CHECK(us_of(c, "attention_fwd") == us_named(t, c, "flash::compute_attn_ws"));
  CHECK(us_of(c, "gemm_fp8", "attn(F)") == 101 + 50 + 370 + 244 + 895);  // q_a, kv_a, q_b, kv_b, o
  CHECK(us_of(c, "gemm_fp8", "mlp(B)") == 124 + 234);                     // shared expert dgrad
  CHECK(us_of(c, "gemm_fp8_grouped") == 927 + 2159);                      // routed experts dgrad
  CHECK(us_of(c, "gemm_fp8_grouped") == us_named(t, c, "m_grouped_fp8_ptp128c"));
  CHECK(us_of(c, "gemm_bf16") == 45 + 39 + 46);  // router gate: forward, two backward GEMMs
  CHECK(us_of(c, "a2a_dispatch") == 4604 + 4154);
  CHECK(us_of(c, "a2a_notify") == 74 + 1381 + 116 + 1436);
  CHECK(us_of(c, "norm") == us_named(t, c, "layer_norm::ln_fwd_kernel"));
  CHECK(us_of(c, "swiglu") == us_named(t, c, "swiglu"));
  CHECK(us_of(c, "rope") == us_named(t, c, "rotary_kernel"));

  // Phases and their occurrence numbers: the two dispatch(F) phases are layer iterations 0 and 1.
  const ClassifiedKernel& dispatch0 = by_correlation(c, 46270);
  const ClassifiedKernel& dispatch1 = by_correlation(c, 51948);
  CHECK(dispatch0.op == "a2a_dispatch");
  CHECK(dispatch0.phase == "dispatch(F)");
  CHECK(dispatch0.phase_index == 0);
  CHECK(dispatch1.phase == "dispatch(F)");
  CHECK(dispatch1.phase_index == 1);
  CHECK(dispatch1.effective_us == dispatch1.kernel.dur_us);  // communication: its whole duration

  // Context: the launching thread's enclosing ranges, outermost first, without ProfilerStep/1F1B.
  const ClassifiedKernel& qkv_copy = by_correlation(c, 44980);
  CHECK(qkv_copy.op == "copy");
  CHECK(qkv_copy.context == "attn(F) > RopeLoraFlashAttnVarlenFunc > aten::copy_");
  const ClassifiedKernel& fa = by_correlation(c, 45028);
  CHECK(fa.phase == "attn(F)");
  CHECK(fa.context == "attn(F) > RopeLoraFlashAttnVarlenFunc");

  // Launched by the autograd thread (no annotation of its own): the phase comes from the main
  // thread's attn(B) range by time, the context from the autograd thread's own ranges.
  const ClassifiedKernel& gate_bwd = by_correlation(c, 47671);
  CHECK(gate_bwd.op == "gemm_bf16");
  CHECK(gate_bwd.phase == "attn(B)");
  CHECK(gate_bwd.phase_index == 0);
  CHECK(gate_bwd.context ==
        "autograd::engine::evaluate_function: MatmulToFP32Backward > MatmulToFP32Backward");

  // Grid bounds separate the router's small PyTorch kernels from activation-sized ones.
  CHECK(by_correlation(c, 45098).op == "elementwise");  // aten::mul over 4096 x 7168, 39 us
  CHECK(by_correlation(c, 47692).op == "elementwise");  // gradient add in MatmulToFP32Backward, 54 us
  int router_kernels = 0;
  for (const ClassifiedKernel& k : c.kernels) {
    if (k.op != "router") continue;
    ++router_kernels;
    CHECK((k.phase == "attn(F)" || k.phase == "attn(B)"));
    CHECK(k.kernel.grid_size() < 8192);
  }
  CHECK(router_kernels == 58);

  // One stream of compute here: nothing overlaps, every effective time is the duration.
  for (const ClassifiedKernel& k : c.kernels) CHECK(k.effective_us == k.kernel.dur_us);
}

TEST_CASE("kernel rules: compute kernels share the wall time, communication keeps its own", "[calibrate]") {
  ChromeTrace t;
  t.format = "pytorch_profiler";
  t.kernels = {
      gpu_kernel("void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_dptp128c_acc::GemmKernel>", 7, 0, 10),
      gpu_kernel("void cutlass::device_kernel<dpsk::grouped_gemm::cuda::fp8_dptp128c_acc::GemmKernel>", 23, 0, 10),
      gpu_kernel("void dpsk::ep::internode::combine<false, 8>", 27, 2, 6),
      gpu_kernel("mystery_kernel", 7, 10, 10),  // unclassified: counts as compute
      gpu_kernel("rotary_kernel", 7, 15, 10),   // overlaps the previous one by 5 us
      gpu_kernel("rotary_kernel", 7, 0, 4, 1),  // another device: not shared with device 0
  };
  std::stable_sort(t.kernels.begin(), t.kernels.end(),
                   [](const TraceKernel& a, const TraceKernel& b) { return a.start_us < b.start_us; });
  const Classification c = classify(t, shipped_rules());
  std::map<std::pair<int, double>, std::vector<double>> eff;  // (device, start) -> effective
  for (const ClassifiedKernel& k : c.kernels) eff[{k.kernel.device, k.kernel.start_us}].push_back(k.effective_us);

  CHECK(eff[{0, 0}] == std::vector<double>{5, 5});  // two wgrad GEMMs on streams 7 and 23
  CHECK(eff[{0, 2}] == std::vector<double>{6});     // the combine: all of it
  CHECK(eff[{0, 10}] == std::vector<double>{7.5});  // alone 5 us, shared 5 us
  CHECK(eff[{0, 15}] == std::vector<double>{7.5});
  CHECK(eff[{1, 0}] == std::vector<double>{4});
  double compute = 0;
  for (const ClassifiedKernel& k : c.kernels)
    if (k.kernel.device == 0 && k.op != "a2a_combine") compute += k.effective_us;
  CHECK(compute == Approx(25));  // the union of [0, 10) and [10, 25)

  REQUIRE(c.unclassified.size() == 1);
  CHECK(c.unclassified[0].name == "mystery_kernel");
  CHECK(c.kernels_classified == 5);
}

TEST_CASE("kernel rules: a hostile kernel name is matched on its head, without exhausting the stack", "[calibrate]") {
  ChromeTrace t;
  // std::regex recurses per character under '.*': 200,000 characters would overflow the stack.
  t.kernels = {gpu_kernel("dpsk::ep::" + std::string(200'000, 'x') + "notify_dispatch", 27, 0, 1),
               gpu_kernel("void dpsk::ep::internode::notify_dispatch<false, 8>" + std::string(200'000, ' '), 27, 1, 1)};
  const Classification c = classify(t, shipped_rules());
  CHECK(c.kernels[0].op.empty());  // the telling part lies beyond the first 4096 characters
  CHECK(c.kernels[1].op == "a2a_notify");
  REQUIRE(c.unclassified.size() == 1);
  CHECK(c.unclassified[0].count == 1);
}

TEST_CASE("kernel rules: every kernel of tandem's CUDA backend has a rule", "[calibrate]") {
  // The names as a profiler demangles them: tandem::cuda::(anonymous namespace)::<kernel>(...).
  const std::regex global(R"(__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+))");
  const std::string prefix = "void tandem::cuda::(anonymous namespace)::";
  ChromeTrace t;
  for (const auto& entry : fs::recursive_directory_iterator(test::repo("exec"))) {
    if (entry.path().extension() != ".cu") continue;
    const std::string text = file_text(entry.path().string());
    for (std::sregex_iterator it(text.begin(), text.end(), global), end; it != end; ++it)
      t.kernels.push_back(gpu_kernel(prefix + (*it)[1].str() + "(float*, int)", 7, 1.0 * t.kernels.size(), 1));
  }
  REQUIRE(t.kernels.size() >= 40);
  const Classification c = classify(t, shipped_rules());
  for (const ClassifiedKernel& k : c.kernels) {
    INFO(k.kernel.name);
    CHECK_FALSE(k.op.empty());
  }
  std::map<std::string, std::string> op;
  for (const ClassifiedKernel& k : c.kernels)
    op[k.kernel.name.substr(prefix.size(), k.kernel.name.find('(', prefix.size()) - prefix.size())] = k.op;
  CHECK(op["rmsnorm_forward_kernel"] == "norm");
  CHECK(op["quantize_blocks_kernel"] == "cast");
  CHECK(op["swiglu_backward_kernel"] == "swiglu");
  CHECK(op["router_select_kernel"] == "router");
  CHECK(op["gather_rows_kernel"] == "permute");
  CHECK(op["adamw_kernel"] == "optimizer");
  CHECK(op["cross_entropy_kernel"] == "loss");
  CHECK(op["embedding_backward_kernel"] == "embedding");
  CHECK(op["causal_softmax_kernel"] == "attention_fwd");
  CHECK(op["softmax_backward_kernel"] == "attention_bwd");
}

TEST_CASE("kernel rules: unclassified kernels are listed by name with count and time", "[calibrate]") {
  std::string text = file_text(test::repo(kShippedRules));
  const std::string norm_rule = "  - {op: norm, name: 'layer_norm::ln_(fwd|bwd)'}\n";
  const size_t at = text.find(norm_rule);
  REQUIRE(at != std::string::npos);
  text.erase(at, norm_rule.size());
  TempDir dir;
  Result<KernelRules> r = load_kernel_rules(dir.write("no-norm.yaml", text));
  REQUIRE(r.ok());

  const ChromeTrace t = excerpt();
  const Classification c = classify(t, r.value());
  // Five RMSNorm forwards of three widths (7168: 112, 104, 127 us; 1536: 22 us; 512: 8 us).
  REQUIRE(c.unclassified.size() == 3);
  int count = 0;
  double us = 0;
  for (const Classification::Unmatched& u : c.unclassified) {
    CHECK_THAT(u.name, Catch::Contains("layer_norm::ln_fwd_kernel"));
    count += u.count;
    us += u.us;
  }
  CHECK(count == 5);
  CHECK(us == 373);
  CHECK(c.unclassified[0].count == 3);
  CHECK(c.unclassified[0].us == 112 + 104 + 127);  // most time first
  CHECK(c.unclassified[1].us == 22);
  CHECK(c.unclassified[2].us == 8);
  CHECK(c.kernels_classified == 128);
  CHECK(c.classified_us == c.total_us - 373);
}

TEST_CASE("kernel rules: a tandem trace classifies its tasks by kind", "[calibrate]") {
  Trace trace;
  trace.engine = "exec";
  trace.scenario = "tiny";
  trace.events = {
      task(0, "compute", "attn_f", 0, 0, 0, 0.0, 10e-6),
      task(0, "comm", "dispatch_f", 0, 0, 0, 10e-6, 30e-6),
      task(0, "compute", "attn_f", 1, 1, 0, 12e-6, 20e-6),
      task(0, "comm", "pp_send", 1, 1, 0, 20e-6, 22e-6),
      task(0, "comm", "dp_reduce_scatter", -1, -1, -1, 40e-6, 50e-6),
      task(0, "compute", "optimizer", -1, -1, -1, 50e-6, 60e-6),
  };
  TempDir dir;
  const std::string path = (dir.path / "exec.json").string();
  REQUIRE(trace.write_perfetto(path));
  Result<ChromeTrace> t = read_chrome_trace(path);
  REQUIRE(t.ok());
  const Classification c = classify(t.value(), shipped_rules());

  REQUIRE(c.kernels.size() == 6);
  CHECK(c.kernels_classified == 6);
  std::vector<std::string> ops, phases;
  std::vector<int> indices;
  for (const ClassifiedKernel& k : c.kernels) {
    ops.push_back(k.op);
    phases.push_back(k.phase);
    indices.push_back(k.phase_index);
  }
  CHECK(ops == std::vector<std::string>{"task", "task_comm", "task", "pp_comm", "dp_comm", "task"});
  CHECK(phases ==
        std::vector<std::string>{"attn_f", "dispatch_f", "attn_f", "pp_send", "dp_reduce_scatter", "optimizer"});
  CHECK(indices == std::vector<int>{0, 0, 1, 0, 0, 0});
  CHECK(c.kernels[1].effective_us == Approx(20));  // comm: whole duration
  CHECK(c.kernels[2].effective_us == Approx(8));   // compute, alone on the device
}

TEST_CASE("kernel rules: bad rules files are errors naming the file and key", "[calibrate]") {
  TempDir dir;
  const std::string ok_head = "name: t\ncomm_ops: [a2a_dispatch]\n";

  InputError e = rules_error(dir, ok_head + "rules:\n  - {op: norm, name: 'layer_norm::(fwd'}\n");
  CHECK(e.file == (dir.path / "rules.yaml").string());
  CHECK(e.key == "rules[0].name");
  CHECK_THAT(e.reason, Catch::Contains("not a valid regular expression"));

  e = rules_error(dir, ok_head + "rules:\n  - {op: norm, name: x}\n  - {op: gemm_fp16, name: y}\n");
  CHECK(e.key == "rules[1].op");
  CHECK_THAT(e.reason, Catch::Contains("unknown op class 'gemm_fp16'"));

  e = rules_error(dir, ok_head + "rules:\n  - {op: norm, nmae: x}\n");
  CHECK(e.key == "rules[0].nmae");
  CHECK_THAT(e.reason, Catch::Contains("unknown key"));

  e = rules_error(dir, ok_head + "colour: blue\nrules:\n  - {op: norm}\n");
  CHECK(e.key == "colour");

  e = rules_error(dir, "comm_ops: [a2a_dispatch, nvlink]\nrules:\n  - {op: norm}\n");
  CHECK(e.key == "comm_ops[1]");

  e = rules_error(dir, "ignore_annotations: ['[']\nrules:\n  - {op: norm}\n");
  CHECK(e.key == "ignore_annotations[0]");

  e = rules_error(dir, ok_head);
  CHECK(e.key == "rules");

  e = rules_error(dir, ok_head + "rules:\n  - {op: norm, min_grid: 10, max_grid: 5}\n");
  CHECK(e.key == "rules[0].max_grid");

  e = rules_error(dir, ok_head + "rules:\n  - {op: copy, category: memcpy}\n");
  CHECK(e.key == "rules[0].category");

  e = rules_error(dir, "rules: [");
  CHECK_THAT(e.reason, Catch::Contains("not valid YAML"));

  Result<KernelRules> d = load_kernel_rules(dir.path.string());
  REQUIRE_FALSE(d.ok());
  CHECK_THAT(d.error().reason, Catch::Contains("not a regular file"));
}
