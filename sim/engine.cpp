#include "sim/engine.h"

#include <simgrid/s4u.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>

#include "common/signed_index.h"
#include "scenarios/plan.h"
#include "scenarios/program.h"
#include "scenarios/stage_partition.h"
#include "scenarios/task_cost.h"
#include "scenarios/task_work.h"
#include "sim/compute_cost.h"
#include "sim/event_loop.h"
#include "sim/gpu_runner.h"
#include "sim/step_context.h"
#include "topologies/simgrid_platform.h"
#include "topologies/topology.h"

namespace sg4 = simgrid::s4u;

namespace tandem {

const char* to_string(Fidelity f) {
  switch (f) {
    case Fidelity::per_pair: return "per_pair";
    case Fidelity::aggregated: return "aggregated";
    case Fidelity::replicated: return "replicated";
    case Fidelity::grouped: return "grouped";
  }
  return "?";
}

namespace {

extern "C" void interrupted(int sig) {
  static const char line[] = "tandem: interrupted: the simulation was stopped\n";
  (void)!write(STDERR_FILENO, line, sizeof line - 1);
  _exit(128 + sig);
}

// A GPU host's "flop/s" in the platform. Nothing executes on it: a GPU's kernels and analytic
// transfers are the EventLoop's timers (sim/gpu_runner.h); only flows use SimGrid's resources.
constexpr double kHostSpeed = 1e9;

}  // namespace

Result<SimResult> simulate(const Scenario& s, const SimOptions& o) {
  return catch_input_errors([&]() -> SimResult {
    const auto wall0 = std::chrono::steady_clock::now();
    std::vector<std::string> files = s.calibration;
    files.insert(files.end(), o.calibration.begin(), o.calibration.end());
    const Calibration calibration = resolve_calibration(files);
    const ComputeCostModel costs(s.cluster.gpu, calibration);
    const StepPlan plan = make_plan(s, o.partition);
    const Workload& w = plan.workload;
    const Program& prog = plan.program;
    const Schedule& sch = prog.schedule;
    auto say = [&](const std::string& what) {
      if (!o.progress) return;
      const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
      std::fprintf(stderr, "[%7.2f s] %s\n", t, what.c_str());
    };
    size_t ntasks = 0;
    for (const auto& tasks : prog.tasks) ntasks += tasks.size();
    say("program: " + std::to_string(sch.ranks) + " pipeline ranks, " + std::to_string(ntasks) + " tasks (" +
        to_string(s.schedule.kind) + ", " + std::to_string(sch.micro_batches) + " micro-batches)");

    // Skewed and measured routing load the members of an EP group unevenly.
    const bool skewed = s.routing.model != RoutingModel::balanced;
    if (skewed && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        std::string("the replicated tier assumes balanced routing (identical replicas); ") +
                            to_string(s.routing.model) + " routing needs grouped, aggregated or per_pair");
    if (s.routing.noise > 0 && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes identical replicas; routing.noise (per micro-batch variation) needs grouped, aggregated or per_pair");
    if (s.faults.any() && o.fidelity == Fidelity::replicated)
      throw_input_error("<command line>", "--fidelity",
                        "the replicated tier assumes identical replicas; faults (slow GPUs, NICs or planes) need grouped, aggregated or per_pair");
    StepContext world;
    world.program = &prog;
    world.workload = &w;
    world.skewed = skewed;
    world.noise = s.routing.noise;
    world.seed = s.routing.seed;
    if (s.faults.slow_kernels()) world.gpu_speed = s.faults.gpu_speed(s.gpus);
    world.waited_on_a2a.assign(idx(s.gpus), 0.0);
    world.waited_on_pp.assign(idx(s.gpus), 0.0);
    world.options = &o;
    world.dp = static_cast<int>(s.plan.dp);
    world.ep = static_cast<int>(s.plan.ep);
    world.gpn = static_cast<int>(s.cluster.gpus_per_node);
    world.a2a = &costs.calibration().all_to_all;
    world.layout = EpLayout{world.dp, world.ep, world.gpn};
    for (int r = 0; r < sch.ranks; ++r) {
      std::vector<TaskWork> works;
      std::vector<double> seconds, routed, scale;
      for (const Task& t : prog.tasks[idx(r)]) {
        works.push_back(task_work(s, w, prog, r, t));
        const TaskCost c = task_cost(s, prog, r, t, works.back(), costs);
        seconds.push_back(c.seconds);
        routed.push_back(c.routed_seconds);
        scale.push_back(c.transfer_scale);
      }
      world.a2a_plan_of_task.emplace_back(works.size(), nullptr);
      world.work.push_back(std::move(works));
      world.compute_seconds.push_back(std::move(seconds));
      world.routed_seconds.push_back(std::move(routed));
      world.transfer_scale.push_back(std::move(scale));
    }

    // The cluster: only the nodes the scenario uses.
    ClusterCard card = s.cluster;
    card.nodes = std::max<int64_t>(1, (s.gpus + card.gpus_per_node - 1) / card.gpus_per_node);
    const Topology topo(card, s.faults.network);
    int argc = 1;
    char arg0[] = "tandem";
    char* argv[] = {arg0, nullptr};
    sg4::Engine engine(&argc, argv);
    world.topo = &topo;
    SimgridPlatform platform(engine, topo, kHostSpeed, SimgridPlatformOptions{});
    // The event loop's carrier actors (sim/event_loop.h) only post a comm and wait: small stacks
    // (SimGrid's default is 8 MiB of address space each, and there is a carrier per flow end
    // in flight at once — tens of thousands in the per-pair tier at 512 GPUs).
    sg4::Engine::set_config("contexts/stack-size:256");
    const int gpus = static_cast<int>(s.gpus);
    world.gpu_time.resize(idx(gpus));
    // The GPUs simulated: all of them, or replica 0 of every pipeline rank.
    std::vector<int> simulated;
    for (int g = 0; g < gpus; ++g)
      if (o.fidelity != Fidelity::replicated || g % world.dp == 0) simulated.push_back(g);
    say("platform: " + std::to_string(topo.num_gpus()) + " GPU hosts, " + std::to_string(topo.num_physical_links()) +
        " links; simulating " + std::to_string(simulated.size()) + " GPUs (" + to_string(o.fidelity) + " tier)");
    EventLoop loop(engine, platform.hosts());
    std::vector<std::unique_ptr<GpuRunner>> runners;
    for (int g : simulated) runners.push_back(GpuRunner::create(world, loop, g));
    if (o.progress)
      world.on_gpu_done = [&](int g, double at) { say("gpu" + std::to_string(g) + " finished its step at simulated " + std::to_string(at) + " s"); };
    // Ctrl-C or SIGTERM: one line and 128 + signal.
    std::signal(SIGINT, interrupted);
    std::signal(SIGTERM, interrupted);
    for (const auto& runner : runners) runner->start();
    loop.run();
    say("done: " + std::to_string(loop.timers_rung()) + " timers, " + std::to_string(loop.flows_started()) + " flows, " +
        std::to_string(loop.network_steps()) + " network steps");
    for (const auto& runner : runners)
      if (!runner->finished())
        throw std::runtime_error("the simulation could not finish the step: " + runner->stuck_at() +
                                 " at simulated time " + std::to_string(loop.now()) + " s");
    if (loop.unmatched() > 0)
      throw std::runtime_error("the simulation could not finish the step: " + std::to_string(loop.unmatched()) +
                               " messages were never matched by their other end");

    SimResult r;
    r.step_time_s = world.end_time;
    r.gpus_simulated = static_cast<int>(simulated.size());
    for (int g : simulated) r.gpu_times.push_back(std::move(world.gpu_time[idx(g)]));
    if (o.fidelity != Fidelity::replicated) {  // every GPU simulated: who waited on whom
      r.waited_on_a2a_s = std::move(world.waited_on_a2a);
      r.waited_on_pp_s = std::move(world.waited_on_pp);
    }
    r.trace.engine = "sim";
    r.trace.program = program_digest(prog);
    r.trace.scenario = s.name;
    r.trace.events = std::move(world.events);
    std::sort(r.trace.events.begin(), r.trace.events.end(),
              [](const TraceEvent& a, const TraceEvent& b) { return std::tie(a.gpu, a.start) < std::tie(b.gpu, b.start); });
    r.sim_wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return r;
  });
}

}  // namespace tandem
