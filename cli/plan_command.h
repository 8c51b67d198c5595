// `tandem plan SCENARIO [--set k=v]... [--fix k=v]... [--vary k=v1,v2,...]... [-j N] [--top N]
//  [--memory-headroom F] [--no-prune] [--csv FILE] [--write-best FILE] [--json]`
//
// Searches the plan space around a scenario and ranks the plans that fit, fastest first. The
// scenario's own keys stay fixed but for the searched ones: by default plan.pp, plan.ep,
// batch.micro_batch_sequences, schedule.kind, comm.sms and plan.dp_overlap (each over the values
// a user would try, and the scenario's own); --fix (or --set) takes a key out of the search,
// --vary gives a key the values to search (any scenario key: recompute.*, comm.node_limit,
// precision.recipe, schedule.stage_layers ...).
//
// 1. Every candidate is examined in this process (-j threads): the scenario's validation rejects
//    the plans that cannot run (counted by the key that fails), a memory headroom (default 5% of
//    HBM) those too tight to run, and the rest get a lower bound on their step
//    (scenarios/step_bound.h: the Program with its calibrated compute and a free network).
// 2. The feasible plans are simulated (`tandem simulate`, each its own process, -j at a time;
//    cli/child_runs.h) in order of their bounds — the scenario's own plan first, so its rank is
//    exact — until every bound left is above the --top-th fastest step found (and the scenario's
//    own): those are pruned, as no simulation could bring them into the table. --no-prune
//    simulates them all. What is simulated does not depend on -j or on the number of processes.
// Under an MPI launch (`mpirun -n K tandem plan ...`, cli/process_group.h) the K processes split
// both steps and process 0 prints and writes; the table is the same for any -j and any K.
// Ctrl-C (SIGINT, SIGTERM) stops the simulations and leaves the CSV as FILE.incomplete.
//
// Capacity planning: with --gpus 1024,2048,... and --days D (or --budget-usd B), the search runs
// at each GPU count, smallest first, and stops at the first whose best plan trains --tokens in
// time (and budget): days, GPU-hours and cost (the cluster card's price) for each count tried.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct PlanOptions {
  std::string path;
  std::vector<std::string> overrides;  // --set: every candidate
  std::vector<std::string> fix;        // --fix key=value: out of the search
  std::vector<std::string> vary;       // --vary key=v1,v2,...: the values searched for key
  double memory_headroom = 0.05;       // fraction of HBM a plan must leave free
  int jobs = 1;
  int top = 10;
  std::string fidelity = "auto";
  std::string csv, write_best;
  // Capacity (with gpu_counts): the smallest of these GPU counts (a list "1024,2048,4096")
  // whose best plan trains training_tokens within `days` (and/or for at most budget_usd).
  std::string gpu_counts;
  double training_tokens = 14.8e12;
  double days = 0;
  double budget_usd = 0;
  bool prune = true;  // skip plans whose step's lower bound cannot enter the table
  bool json = false;
  std::string self;  // the tandem executable
};

Result<nlohmann::json> plan_command(const PlanOptions& o, std::string& text);

}  // namespace tandem
