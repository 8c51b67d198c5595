// tandem: plans and verifies large mixture-of-experts training runs.
// Each subcommand lives in its own *_command file; this file only wires them to CLI11.
// Exit codes: 0 success, 2 bad input (file, key and reason printed), 1 internal error.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>

#include <CLI/CLI.hpp>

#include "cli/bench_command.h"
#include "cli/calibrate_command.h"
#include "cli/compare_command.h"
#include "cli/describe_command.h"
#include "cli/execute_command.h"
#include "cli/keys_command.h"
#include "cli/report_command.h"
#include "cli/schedule_command.h"
#if TANDEM_HAVE_SIM
#include "cli/child_runs.h"
#include "cli/plan_command.h"
#include "cli/process_group.h"
#include "cli/simulate_command.h"
#include "cli/sweep_command.h"
#include "cli/validate_command.h"
#endif

namespace {

int report(const tandem::InputError& e) {
  std::fprintf(stderr, "tandem: error: %s\n", e.message().c_str());
  return 2;
}

// CLI11's message on one line (a few of its messages span lines).
std::string one_line(std::string m) {
  for (char& c : m)
    if (c == '\n' || c == '\r') c = ' ';
  while (!m.empty() && m.back() == ' ') m.pop_back();
  return m;
}

// Prints a subcommand's result: its JSON object with --json, else its text. Exit code.
int emit(const tandem::Result<nlohmann::json>& r, bool json, const std::string& text) {
  if (!r) return report(r.error());
  if (json) {
    // Every JSON output says which tandem wrote it and which shape it has (a command bumps its
    // own schema_version when it changes a key's meaning or removes one).
    nlohmann::json out = r.value();
    if (out.is_object()) {
      if (!out.contains("schema_version")) out["schema_version"] = 1;
      if (!out.contains("tandem_version")) out["tandem_version"] = TANDEM_VERSION;
    }
    // Strings come from validated UTF-8 cards; a path or name from the command line may not be.
    std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  } else {
    std::cout << text;
  }
  // A full disk or a closed pipe must not look like success.
  if (!std::cout.flush()) {
    std::fprintf(stderr, "tandem: error: <stdout>: cannot write the output (%s)\n", std::strerror(errno));
    return 1;
  }
  return 0;
}

#if TANDEM_HAVE_SIM
// plan and sweep: under an MPI launch every process runs a share and holds the result; process 0
// speaks. An interrupt (SIGINT, SIGTERM) exits 128 + signal, saying what was kept.
template <class Command>
int emit_from_group(Command&& command, bool json, std::string& text) {
  try {
    const tandem::InterruptScope interrupts;
    const bool leader = tandem::ProcessGroup::get().leader();
    const tandem::Result<nlohmann::json> r = command();
    if (!leader) return r ? 0 : 2;
    if (const int code = emit(r, json, text); code != 0) return code;
    // Output printed; runs that crashed (not rejected) make the command fail.
    const nlohmann::json& out = r.value();
    if (const int64_t failed = out.value("failed", int64_t{0}); failed > 0) {
      std::string first;
      if (out.contains("failed_runs") && !out["failed_runs"].empty()) first = ", first: " + out["failed_runs"][0].get<std::string>();
      std::fprintf(stderr, "tandem: error: %lld simulation%s failed%s\n", static_cast<long long>(failed), failed == 1 ? "" : "s",
                   first.c_str());
      return 1;
    }
    return 0;
  } catch (const tandem::InputException& e) {
    return report(e.error());
  } catch (const tandem::Interrupted& e) {
    std::fprintf(stderr, "tandem: %s\n", e.what());
    return 128 + e.signal;
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tandem: plan and verify large mixture-of-experts training runs"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("tandem ") + TANDEM_VERSION);

  tandem::DescribeOptions describe;
  auto* d = app.add_subcommand("describe",
                               "Parameters, FLOPs, memory per GPU, all-to-all volumes and fabric of a "
                               "scenario (or of a model or cluster card)");
  d->add_option("card", describe.path, "scenario, model card (YAML or Hugging Face config.json) or cluster card")
      ->required();
  d->add_option("--set", describe.overrides, "override a scenario key: --set plan.pp=8 (repeatable)");
  d->add_flag("--json", describe.json, "print one JSON object on stdout instead of text");
  d->add_option("--seq-len", describe.seq_len, "sequence length for a bare model card (default 4096)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  d->add_flag("--ops", describe.ops, "also print the op table of the first block of each kind");

  tandem::ScheduleOptions schedule;
  auto* sc = app.add_subcommand("schedule",
                                "Stage partition, per-rank slots and tasks, and the unit-cost bubble of "
                                "a scenario's pipeline schedule");
  sc->add_option("scenario", schedule.path, "scenario file")->required();
  sc->add_option("--set", schedule.overrides, "override a scenario key: --set schedule.kind=zb1p (repeatable)");
  sc->add_option("--svg", schedule.svg, "write the per-rank timeline as an SVG (style of the report's Figure 5)");
  sc->add_flag("--json", schedule.json, "print one JSON object on stdout instead of text");
  sc->add_option("--unit-costs", schedule.unit_costs, "slot durations F,B,W,FB (default 1,2,1,3)");

  tandem::CompareOptions compare;
  auto* co = app.add_subcommand("compare", "Two traces of one scenario side by side, task by task (sim vs exec, two calibrations, two machines)");
  co->add_option("a", compare.a, "trace A (simulate --trace or execute --trace)")->required();
  co->add_option("b", compare.b, "trace B, of the same scenario")->required();
  co->add_option("--top", compare.top, "list the N tasks that differ most (default 10)")->check(CLI::Range(0, 1000000));
  co->add_option("--scenario", compare.scenario, "B a profiler trace (PyTorch): the scenario A is of; its kernels are classified into task kinds by the kernel rules and kinds align");
  co->add_option("--set", compare.overrides, "override a key of --scenario (repeatable)");
  co->add_option("--rules", compare.rules, "kernel classification rules for a profiler trace (default sim/calibration/kernel-rules.yaml)");
  co->add_flag("--json", compare.json, "print one JSON object on stdout instead of text");

  tandem::ReportOptions report_options;
  auto* re = app.add_subcommand("report", "One self-contained HTML page (opens offline) from simulate/execute/compare/sweep --json results and traces");
  re->add_option("inputs", report_options.inputs, "result JSON files and trace files (a trace draws the timeline of its engine's result)")->required();
  re->add_option("-o,--out", report_options.out, "the HTML file to write")->required();
  re->add_option("--title", report_options.title, "the page's title (default: tandem report: <scenario>)");

  tandem::KeysOptions keys;
  auto* ke = app.add_subcommand("keys", "The reference of every card key: type, accepted values, default (docs/card-keys.md)");
  ke->add_option("--out", keys.out, "write the Markdown reference here");
  ke->add_option("--check", keys.check, "compare a committed reference with the card readers (exit 2 if out of date)");

#if TANDEM_HAVE_SIM
  tandem::SimulateOptions simulate;
  auto* si = app.add_subcommand("simulate", "Predict one training step on the modelled cluster (SimGrid)");
  si->add_option("scenario", simulate.path, "scenario file")->required();
  si->add_option("--set", simulate.overrides, "override a scenario key (repeatable)");
  si->add_option("--trace", simulate.trace, "write a Perfetto/Chrome trace (JSON): one GPU per pipeline rank unless --trace-gpus");
  si->add_option("--trace-gpus", simulate.trace_gpus, "trace GPUs 0..N-1 instead (global ids: GPU = pipeline rank x dp + replica); default: one GPU per pipeline rank")
      ->check(CLI::Range(1, 1 << 20));
  si->add_option("--fidelity", simulate.fidelity, "auto (default: replicated for balanced routing, grouped for skewed), replicated (one pipeline replica, analytic all-to-all), grouped (every GPU, each all-to-all an EP-group collective with analytic time), aggregated (every GPU, DeepEP flows) or per_pair (every GPU, per-pair flows)");
  si->add_option("--calibration", simulate.calibration, "kernel cost data, repeatable, laid over the scenario's `calibration:` list: overlays (`tandem calibrate` output) and `tandem bench ... --json` outputs; a complete calibration file replaces the list");
  si->add_option("--tokens", simulate.training_tokens, "training tokens the days and cost are given for (default 14.8e12, DeepSeek-V3's pre-training)");
  si->add_flag("--json", simulate.json, "print one JSON object on stdout instead of text");
  si->add_flag("--progress", simulate.progress, "report progress on stderr");

  tandem::CalibrateOptions calibrate;
  auto* ca = app.add_subcommand("calibrate", "Derive a calibration overlay for the simulator from measured traces (a PyTorch profiler trace, tandem execute --trace)");
  ca->add_option("traces", calibrate.traces, "Chrome trace-event JSON files")->required();
  ca->add_option("--scenario", calibrate.scenario, "the scenario whose shapes the traces ran (model, micro-batch, EP, precision)")->required();
  ca->add_option("--set", calibrate.overrides, "override a scenario key (repeatable)");
  ca->add_option("--rules", calibrate.rules, "kernel classification rules (default sim/calibration/kernel-rules.yaml)");
  ca->add_option("--out", calibrate.out, "write the calibration overlay (YAML) here");
  ca->add_option("--name", calibrate.name, "the overlay's name");
  ca->add_option("--source", calibrate.source, "a provenance line put first in the overlay (repeatable): where the traces come from");
  ca->add_flag("--json", calibrate.json, "print one JSON object on stdout instead of text");

  tandem::ValidateOptions validate;
  auto* va = app.add_subcommand("validate", "The calibrated predictions beside the measurements they are checked against (reports/validation/)");
  va->add_option("--out", validate.out, "write the Markdown page here (e.g. reports/validation/README.md)");
  va->add_flag("--json", validate.json, "print one JSON object on stdout instead of the page");

  tandem::SweepOptions sweep;
  auto* sw = app.add_subcommand("sweep", "Simulate the cross product of varied scenario keys (what-ifs)");
  sw->add_option("scenario", sweep.path, "scenario file")->required();
  sw->add_option("--vary", sweep.vary, "key=v1,v2,... (repeatable; the cross product runs)")->required();
  sw->add_option("--set", sweep.overrides, "a fixed override for every run (repeatable)");
  sw->add_option("--csv", sweep.csv, "write one row per run to this CSV file");
  sw->add_option("--fidelity", sweep.fidelity, "simulator tier for every run (default auto)");
  sw->add_option("--calibration", sweep.calibration, "kernel cost data for every run, as simulate --calibration (repeatable)");
  sw->add_option("-j,--jobs", sweep.jobs, "runs at a time, each its own process (default 1)")->check(CLI::Range(1, 1024));
  sw->add_flag("--json", sweep.json, "print one JSON object on stdout instead of the table");

  tandem::PlanOptions plan;
  auto* pl = app.add_subcommand("plan", "Search the plan space around a scenario (pp, ep, micro-batch, schedule, comm SMs, DP overlap) and rank the plans that fit, fastest first");
  pl->add_option("scenario", plan.path, "scenario file: the model, cluster, batch and every key not searched")->required();
  pl->add_option("--set", plan.overrides, "override a scenario key for every candidate (repeatable)");
  pl->add_option("--fix", plan.fix, "key=value: take a key out of the search (repeatable)");
  pl->add_option("--vary", plan.vary, "key=v1,v2,...: the values to search for a key (replaces its defaults; repeatable)");
  pl->add_option("--memory-headroom", plan.memory_headroom, "fraction of HBM a plan must leave free (default 0.05)");
  pl->add_option("-j,--jobs", plan.jobs, "simulations at a time, each its own process (default 1)")->check(CLI::Range(1, 1024));
  pl->add_option("--top", plan.top, "plans listed (default 10)")->check(CLI::Range(1, 1000000));
  pl->add_option("--fidelity", plan.fidelity, "simulator tier for every candidate (default auto)");
  pl->add_option("--csv", plan.csv, "write every candidate (status, figures, reason) to this CSV file");
  pl->add_option("--write-best", plan.write_best, "write the fastest plan as a scenario card that tandem simulate reproduces");
  pl->add_option("--gpus", plan.gpu_counts, "capacity: GPU counts to try, e.g. 1024,2048,4096 (with --days or --budget-usd)");
  pl->add_option("--tokens", plan.training_tokens, "capacity: training tokens (default 14.8e12)");
  pl->add_option("--days", plan.days, "capacity: the deadline in days");
  pl->add_option("--budget-usd", plan.budget_usd, "capacity: the most the run may cost (the cluster card's price per GPU-hour)");
  pl->add_flag("!--no-prune", plan.prune, "simulate every plan that fits, even those whose lower bound cannot enter the table");
  pl->add_flag("--json", plan.json, "print one JSON object on stdout instead of text");
#endif

  tandem::BenchOptions bench;
  auto* be = app.add_subcommand("bench", "Microbenchmarks of the CUDA backend on the local GPU (FP8 GEMMs, quantisation, an MoE layer)");
  be->add_option("what", bench.what, "gemm, quant or moe-layer")->required();
  be->add_option("--iters", bench.iters, "timed iterations (default 20)");
  be->add_option("--warmup", bench.warmup, "warm-up iterations (default 3)");
  be->add_option("--comm-sms", bench.comm_sms, "SMs left to communication: also run with SM_COUNT_TARGET = SMs - N (default 20; 0: no such run)");
  be->add_option("--rows", bench.rows, "quant: rows (default 8192); moe-layer: token-expert rows (default 32768)");
  be->add_option("--cols", bench.cols, "quant: columns (default 7168)");
  be->add_flag("--json", bench.json, "print one JSON object on stdout instead of text");

  tandem::ExecuteOptions execute;
  auto* ex = app.add_subcommand("execute", "Run training steps of a scenario on the executor (CPU or CUDA backend)");
  ex->add_option("scenario", execute.path, "scenario file")->required();
  ex->add_option("--set", execute.overrides, "override a scenario key (repeatable)");
  ex->add_option("--backend", execute.backend, "cpu (default) or cuda (GPUs: needs a CUDA build and a device)");
  ex->add_option("--cuda-world", execute.cuda_world,
                 "--backend cuda: auto (default), virtual (every rank on GPU 0) or nccl (one rank per GPU)");
  ex->add_option("--steps", execute.steps, "training steps (default 1)")->check(CLI::Range(1, 100000));
  ex->add_flag("--check-reference", execute.check_reference,
               "compare step 1's loss and gradients with a sequential single-rank step");
  ex->add_option("--numerics", execute.numerics, "fp32 (exact, default), bf16 or fp8");
  ex->add_option("--lr", execute.lr, "AdamW learning rate (default 1e-3)");
  ex->add_option("--bias-update-speed", execute.bias_update_speed,
                 "aux-loss-free balancing: router bias speed gamma per step (default 0.001, DeepSeek-V3; 0 = off)");
  ex->add_option("--balance-loss-alpha", execute.balance_loss_alpha,
                 "sequence-wise balance loss alpha in every MoE layer (default 0.0001; 0 = off)");
  ex->add_option("--mtp-lambda", execute.mtp_lambda,
                 "MTP loss weight lambda (default 0.3, DeepSeek-V3's early training; 0 = MTP loss off)");
  ex->add_option("--router-bias-skew", execute.router_bias_skew)->group("");  // tests: skewed router bias at init
  ex->add_option("--trace", execute.trace, "write step 1's task timings as a Perfetto/Chrome trace (JSON)");
  ex->add_flag("--json", execute.json, "print one JSON object on stdout instead of text");
  ex->add_option("--fault-rank", execute.fault_rank)->group("");  // tests: this world rank fails...
  ex->add_option("--fault-at", execute.fault_at)->group("");      // ...at its N-th communicator call
  ex->add_option("--timeout-ms", execute.timeout_ms)->group("");  // per communicator call

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // One line, as every other bad input (CLI11's own print adds a second, "Run with --help").
    return report(tandem::InputError{"<command line>", "", one_line(e.what())});
  }

  try {
    std::string text;
    if (*sc) return emit(tandem::schedule(schedule, text), schedule.json, text);
    if (*d) return emit(tandem::describe(describe, text), describe.json, text);
    if (*re) return emit(tandem::report_command(report_options, text), false, text);
    if (*co) return emit(tandem::compare_command(compare, text), compare.json, text);
    if (*be) return emit(tandem::bench_command(bench, text), bench.json, text);
    if (*ke) {
      auto r = tandem::keys_command(keys);
      if (!r) return report(r.error());
      std::cout << r.value();
      return 0;
    }
    if (*ex) {
      bool leader = true;
      tandem::ExecuteFailure failure;
      auto r = tandem::execute_command(execute, text, leader, &failure);
      if (!failure.message.empty()) {
        std::fprintf(stderr, "tandem: execute failed: %s\n", failure.message.c_str());
        return 3;
      }
      if (r && !leader) return 0;  // under mpirun, rank 0's process prints
      return emit(r, execute.json, text);
    }
#if TANDEM_HAVE_SIM
    if (*si) return emit(tandem::simulate_command(simulate, text), simulate.json, text);
    if (*ca) return emit(tandem::calibrate_command(calibrate, text), calibrate.json, text);
    if (*va) {
      std::error_code ec;
      validate.self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
      if (ec) validate.self = argv[0];
      return emit(tandem::validate_command(validate, text), validate.json, text);
    }
    if (*pl) {
      std::error_code ec;  // this executable, for the child runs
      plan.self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
      if (ec) plan.self = argv[0];
      return emit_from_group([&] { return tandem::plan_command(plan, text); }, plan.json, text);
    }
    if (*sw) {
      std::error_code ec;  // this executable, for the child runs
      sweep.self = std::filesystem::read_symlink("/proc/self/exe", ec).string();
      if (ec) sweep.self = argv[0];
      return emit_from_group([&] { return tandem::sweep(sweep, text); }, sweep.json, text);
    }
#endif
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tandem: internal error: %s\n", e.what());
    return 1;
  }
  return 0;
}
