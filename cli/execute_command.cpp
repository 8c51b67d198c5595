#include "cli/execute_command.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

#include "common/card_reader.h"
#include "common/format.h"
#include "common/read_file.h"
#include "exec/cuda_backend.h"
#include "exec/runtime/budget.h"
#include "exec/backends/cpu/cpu_executor.h"
#include "reports/step_metrics.h"
#include "scenarios/scenario.h"

namespace tandem {

Result<nlohmann::json> execute_command(const ExecuteOptions& o, std::string& text, bool& leader,
                                       ExecuteFailure* failure) {
  leader = true;
  if (o.backend != "cpu" && o.backend != "cuda")
    return InputError{"<command line>", "--backend", "'" + o.backend + "': expected cpu or cuda"};
  const bool cuda = o.backend == "cuda";
  // The CUDA backend is a module loaded here, on the first command that asks for it.
  const CudaBackend* gpu = nullptr;
  cuda::CudaWorldKind cuda_world = cuda::CudaWorldKind::automatic;
  if (cuda) {
    const CudaBackendLoad& load = load_cuda_backend();
    if (!load.backend) return InputError{"<command line>", "--backend", "'cuda': " + load.why + "; use --backend cpu"};
    gpu = load.backend;
    try {
      cuda_world = cuda::parse_cuda_world_kind(o.cuda_world);
    } catch (const std::invalid_argument& e) {
      return InputError{"<command line>", "--cuda-world", e.what()};
    }
    const cuda::DeviceQuery q = gpu->query_devices();
    if (q.count == 0)
      return InputError{"<command line>", "--backend", "'cuda': no CUDA device is present (" + q.detail + "); use --backend cpu"};
    if (o.check_reference)
      return InputError{"<command line>", "--check-reference",
                        "the CPU backend's check (the CUDA backend is checked against the CPU backend by the GPU "
                        "check exec_cuda); drop it or use --backend cpu"};
  }
  nn::Numerics numerics = nn::Numerics::exact;
  if (o.numerics == "bf16") numerics = nn::Numerics::bf16;
  else if (o.numerics == "fp8") numerics = nn::Numerics::fp8;
  else if (o.numerics != "fp32")
    return InputError{"<command line>", "--numerics", "'" + o.numerics + "': expected fp32, bf16 or fp8"};
  // Hyperparameters first: a NaN or absurd learning rate would run the whole job into NaN losses.
  if (!(std::isfinite(o.lr) && o.lr >= 0 && o.lr <= 1))
    return InputError{"<command line>", "--lr", "expected a learning rate in [0, 1], got " + format_number(o.lr)};
  if (!o.trace.empty())
    if (auto bad = check_writable(o.trace, "--trace")) return *bad;
  auto loaded = load_scenario(o.path, o.overrides);
  if (!loaded) return loaded.error();
  const Scenario& s = loaded.value();
  runtime::RunSpec spec;
  try {
    if (!(o.bias_update_speed >= 0 && o.bias_update_speed < 1))
      throw_input_error("<command line>", "--bias-update-speed", "expected a value in [0, 1)");
    if (!(o.balance_loss_alpha >= 0 && o.balance_loss_alpha < 1))
      throw_input_error("<command line>", "--balance-loss-alpha", "expected a value in [0, 1)");
    if (!(o.mtp_lambda >= 0 && o.mtp_lambda <= 10))
      throw_input_error("<command line>", "--mtp-lambda", "expected a value in [0, 10]");
    if (!(std::abs(o.router_bias_skew) < 1))
      throw_input_error("<command line>", "--router-bias-skew", "expected a value in (-1, 1)");
    spec = runtime::make_run_spec(s, numerics, o.lr, 1);
    spec.bias_update_speed = o.bias_update_speed;
    spec.balance_loss_alpha = o.balance_loss_alpha;
    spec.mtp_lambda = o.mtp_lambda;
    spec.setup.router_bias_skew = o.router_bias_skew;
    if (!cuda) runtime::check_cpu_budget(s, spec.workload);
    if (cuda) {
      runtime::GpuBudget gb;
      gb.device_bytes = gpu->query_devices().memory_bytes;
      // Virtual ranks share GPU 0; NCCL puts one rank on each GPU.
      gb.devices = gpu->resolve_world(cuda_world) == cuda::CudaWorldKind::nccl ? spec.world_size() : 1;
      runtime::check_gpu_budget(s, spec.workload, gb);
    }
  } catch (const InputException& e) {
    return e.error();
  }
  runtime::ExecOptions eo;
  eo.steps = o.steps;
  eo.numerics = numerics;
  eo.check_reference = o.check_reference;
  eo.lr = o.lr;
  eo.trace = true;  // step 1's task timings: the report's breakdown, and --trace's file
  eo.timeout = std::chrono::milliseconds(o.timeout_ms);
  if (o.fault_rank >= 0) eo.fault = comm::FaultInjection{o.fault_rank, o.fault_at, comm::FaultInjection::Mode::announced};
  runtime::ExecResult r;
  std::string failed;
  try {
    r = cuda ? gpu->execute(spec, eo, cuda_world, failed) : runtime::execute(spec, eo);
  } catch (const runtime::ExecFailure& e) {
    failed = e.what();
  }
  if (!failed.empty()) {
    if (failure) failure->message = failed;
    return nlohmann::json::object();
  }
  leader = r.leader;
  if (leader && !o.trace.empty() && !r.trace.write_perfetto(o.trace))
    return InputError{o.trace, "", "cannot write the trace"};

  nlohmann::json j;
  char line[256];
  j["command"] = "execute";
  j["scenario"] = s.name;
  j["backend"] = o.backend;
  j["numerics"] = o.numerics;
  j["world"] = r.world;
  j["ranks"] = spec.world_size();
  j["schedule"] = to_string(s.schedule.kind);
  j["micro_batches"] = spec.micro_batches;
  j["tokens_per_step"] = s.tokens_per_step();
  const bool has_mtp = s.model.num_nextn_predict_layers > 0;
  if (has_mtp) {
    j["mtp_depth"] = s.model.num_nextn_predict_layers;
    j["mtp_lambda"] = o.mtp_lambda;
    std::snprintf(line, sizeof line, "MTP: depth %lld, lambda %g (mtp loss = lambda/D * sum of the depths' CE)\n",
                  static_cast<long long>(s.model.num_nextn_predict_layers), o.mtp_lambda);
    text += line;
  }
  nlohmann::json steps = nlohmann::json::array();
  text += "tandem execute " + s.name + ": " + r.world + ", " + o.numerics + "\n";
  const bool has_moe = !r.steps.empty() && !r.steps.front().moe_layers.empty();
  if (has_moe) {
    j["bias_update_speed"] = o.bias_update_speed;
    std::snprintf(line, sizeof line, "aux-loss-free bias update: gamma %g after each step%s\n", o.bias_update_speed,
                  o.bias_update_speed == 0 ? " (off)" : "");
    text += line;
    j["balance_loss_alpha"] = o.balance_loss_alpha;
    std::snprintf(line, sizeof line, "sequence-wise balance loss: alpha %g%s\n", o.balance_loss_alpha,
                  o.balance_loss_alpha == 0 ? " (off)" : "");
    text += line;
    if (o.router_bias_skew != 0) {
      j["router_bias_skew"] = o.router_bias_skew;
      std::snprintf(line, sizeof line, "router bias skew %g on experts [0, E/4) at init (test option)\n", o.router_bias_skew);
      text += line;
    }
  }
  for (size_t i = 0; i < r.steps.size(); ++i) {
    const auto& st = r.steps[i];
    nlohmann::json js{{"step", i + 1}, {"loss", st.loss}, {"wall_s", st.wall_s}, {"tokens_per_s", st.tokens_per_s}};
    std::snprintf(line, sizeof line, "step %zu  loss %.6f  %.3f s  %.0f tokens/s", i + 1, st.loss, st.wall_s, st.tokens_per_s);
    text += line;
    if (has_mtp) {
      js["mtp_loss"] = st.mtp_loss;
      std::snprintf(line, sizeof line, "  mtp loss %.6f", st.mtp_loss);
      text += line;
    }
    if (has_moe) {
      // max/mean expert load of the step: per MoE layer (keyed by layer index) and the worst.
      nlohmann::json per_layer = nlohmann::json::object();
      for (size_t l = 0; l < st.moe_layers.size(); ++l)
        per_layer[std::to_string(st.moe_layers[l])] = st.load_max_over_mean[l];
      js["expert_load_max_over_mean"] = per_layer;
      js["max_expert_load_max_over_mean"] = st.worst_load();
      js["balance_loss"] = st.balance_loss;
      std::snprintf(line, sizeof line, "  balance loss %.3g  expert load max/mean %.3f", st.balance_loss, st.worst_load());
      text += line;
    }
    text += "\n";
    steps.push_back(js);
  }
  j["steps"] = steps;
  j["loss"] = nlohmann::json::array();
  for (const auto& st : r.steps) j["loss"].push_back(st.loss);
  if (has_mtp) {
    j["mtp_loss"] = nlohmann::json::array();
    for (const auto& st : r.steps) j["mtp_loss"].push_back(st.mtp_loss);
  }
  if (has_moe) {
    j["balance_loss"] = nlohmann::json::array();
    for (const auto& st : r.steps) j["balance_loss"].push_back(st.balance_loss);
  }
  // Step 1 by the executor's clock, accounted as the simulator accounts a prediction (reports/).
  if (!r.trace.events.empty()) {
    const StepMetrics m =
        step_metrics(step_times(account_trace(r.trace, spec.program)), s, spec.workload, spec.program.partition, 1e12);
    text += strprintf("Step 1 on the %s backend, by its clock (%d world ranks of this process)\n", o.backend.c_str(),
                      m.times.gpus);
    text += metrics_text(m, false);
    text += times_text(m.times);
    j["step_1"] = metrics_json(m, false);
  }
  if (r.max_grad_rel_err) {
    j["max_grad_rel_err"] = *r.max_grad_rel_err;
    j["loss_matches_reference"] = r.losses_match.value_or(false);
    std::snprintf(line, sizeof line, "reference: max_grad_rel_err %.3g, losses %s\n", *r.max_grad_rel_err,
                  r.losses_match.value_or(false) ? "bit-identical" : "DIFFER");
    text += line;
  }
  return j;
}

}  // namespace tandem
