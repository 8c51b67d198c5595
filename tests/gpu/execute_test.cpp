// GPU check of `tandem execute --backend cuda` (exec/backends/cuda/cuda_executor.h) against the CPU
// backend, whole training steps on virtual ranks (one GPU):
//   exec_cuda   tiny-moe (4 layers, seq_len 32, MTP depth 1, balance loss and bias update on):
//               (a) PP4 1F1B and (b) PP4 DualPipe on 4 virtual ranks (EP 1), (c) PP4 DualPipe x EP2
//               on 8 (DP 2: expert all-to-all, ZeRO-1 over two replicas, DualPipe's copy
//               exchange), exact numerics, two steps each:
//               - step 1: loss, MTP loss and balance loss within rel 2e-5 of the CPU backend's.
//                 Same weights, same tokens, same schedule-independent summation order on both;
//                 what differs is FP32 GEMM / reduction order inside kernels (cuBLAS vs Eigen,
//                 each a rel ~1e-6 effect on a mean of ~ln(vocab)-sized terms);
//               - step 2: rel 1e-3 (AdamW divides by sqrt(v): near-zero gradients that differ in
//                 the last bits move their weight by up to lr = 1e-3 differently);
//               - the device run is deterministic: a second run gives bit-identical losses;
//               - the trace has one event per task of every rank, 0 <= start <= end;
//               - expert loads of step 1 (routing on the same scores up to rounding): printed.
//               (d) fp8, PP4 DualPipe on 4: both steps' losses within rel 1e-2 of the CPU
//               backend's fp8 (software FP8 with DeepSeek's promotion vs cuBLASLt block-scaled
//               GEMMs with FP32 accumulation: the GEMM-level tolerance of the gemm check). Step 2
//               also catches FP8 weights not re-quantised after the optimizer (a stale cache runs
//               step 2 on step 1's weights: the loss then misses the CPU's by the step's drop, ~4%).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "common/signed_index.h"
#include "exec/backends/cuda/cuda_executor.h"
#include "exec/backends/cpu/cpu_executor.h"
#include "exec/runtime/run_spec.h"
#include "scenarios/scenario.h"
#include "tests/gpu/gpu_check.h"
#include "tests/test_paths.h"

namespace {

using namespace tandem;
using tandem::gputest::expect;

runtime::RunSpec tiny(const std::string& file, std::vector<std::string> overrides, nn::Numerics numerics) {
  overrides.push_back("model.num_hidden_layers=4");
  overrides.push_back("batch.seq_len=32");
  auto s = load_scenario(tandem::test::repo("scenarios/" + file), overrides);
  if (!s) throw std::runtime_error("cannot load " + file + ": " + s.error().message());
  return runtime::make_run_spec(s.value(), numerics, 1e-3, 1);
}

double rel(double got, double want) { return std::abs(got - want) / std::max(std::abs(want), 1e-30); }

void compare_case(const std::string& name, const runtime::RunSpec& spec, bool exact) {
  runtime::ExecOptions o;
  o.steps = 2;
  o.numerics = spec.setup.numerics;
  o.trace = true;
  const runtime::ExecResult cpu = runtime::execute(spec, o);
  const runtime::ExecResult gpu = cuda::execute_cuda(spec, o, cuda::CudaWorldKind::virtual_ranks);
  expect(gpu.steps.size() == cpu.steps.size(), name + ": step count");
  for (std::size_t k = 0; k < std::min(cpu.steps.size(), gpu.steps.size()); ++k) {
    const auto& c = cpu.steps[k];
    const auto& g = gpu.steps[k];
    const double tol = !exact ? 1e-2 : k == 0 ? 2e-5 : 1e-3;
    std::printf("  %s step %zu: loss cpu %.9g gpu %.9g (rel %.2e), mtp %.9g / %.9g, balance %.6g / %.6g, %.3f s\n",
                name.c_str(), k + 1, c.loss, g.loss, rel(g.loss, c.loss), c.mtp_loss, g.mtp_loss, c.balance_loss,
                g.balance_loss, g.wall_s);
    expect(std::isfinite(g.loss) && rel(g.loss, c.loss) <= tol, name + ": loss of step " + std::to_string(k + 1));
    if (c.mtp_loss != 0)
      expect(rel(g.mtp_loss, c.mtp_loss) <= tol, name + ": MTP loss of step " + std::to_string(k + 1));
    if (c.balance_loss != 0)
      expect(rel(g.balance_loss, c.balance_loss) <= 10 * tol, name + ": balance loss of step " + std::to_string(k + 1));
    if (k == 0)
      for (std::size_t l = 0; l < std::min(c.load_max_over_mean.size(), g.load_max_over_mean.size()); ++l)
        std::printf("    layer %lld expert load max/mean: cpu %.4f gpu %.4f\n",
                    static_cast<long long>(c.moe_layers[l]), c.load_max_over_mean[l], g.load_max_over_mean[l]);
  }
  // The trace: every task of every world rank once (each replica runs its pipeline rank's list),
  // device times from the origin.
  std::size_t tasks = 0;
  for (int g = 0; g < spec.world_size(); ++g)
    tasks += spec.program.tasks[idx(spec.pipeline_rank_of(g))].size();
  expect(gpu.trace.events.size() == tasks, name + ": one trace event per task (" +
                                               std::to_string(gpu.trace.events.size()) + " of " + std::to_string(tasks) + ")");
  bool ordered = true;
  for (const auto& e : gpu.trace.events) ordered = ordered && e.start >= 0 && e.end >= e.start;
  expect(ordered, name + ": trace events have 0 <= start <= end");
  if (!exact) return;
  // Determinism: the same scenario and seed give the same bits.
  runtime::ExecOptions again = o;
  again.trace = false;
  const runtime::ExecResult second = cuda::execute_cuda(spec, again, cuda::CudaWorldKind::virtual_ranks);
  bool same = second.steps.size() == gpu.steps.size();
  for (std::size_t k = 0; same && k < gpu.steps.size(); ++k)
    same = second.steps[k].loss == gpu.steps[k].loss && second.steps[k].mtp_loss == gpu.steps[k].mtp_loss;
  expect(same, name + ": a second device run gives bit-identical losses");
}

}  // namespace

TANDEM_GPU_CHECK(exec_cuda) {
  compare_case("1f1b pp4", tiny("tiny-1f1b.yaml", {"gpus=4", "plan.ep=1"}, nn::Numerics::exact), true);
  compare_case("dualpipe pp4", tiny("tiny-dualpipe.yaml", {"gpus=4", "plan.ep=1"}, nn::Numerics::exact), true);
  compare_case("dualpipe pp4 x ep2", tiny("tiny-dualpipe.yaml", {}, nn::Numerics::exact), true);
  compare_case("dualpipe pp4 fp8", tiny("tiny-dualpipe.yaml", {"gpus=4", "plan.ep=1"}, nn::Numerics::fp8), false);
}
