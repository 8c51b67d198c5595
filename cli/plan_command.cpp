#include "cli/plan_command.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <atomic>
#include <map>
#include <optional>
#include <mutex>
#include <thread>

#include "cli/axes.h"
#include "cli/child_runs.h"
#include "cli/process_group.h"
#include "common/format.h"
#include "common/signed_index.h"
#include "common/write_file.h"
#include "scenarios/memory.h"
#include "scenarios/plan.h"
#include "scenarios/scenario.h"
#include "scenarios/step_bound.h"

namespace tandem {

namespace {

constexpr size_t kMaxCandidates = 20000;
constexpr size_t kBatch = 16;  // simulations between two updates of the pruning threshold
const char* const kMetrics[] = {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "memory_peak_bytes", "bubble_fraction",
                                "exposed_comm_fraction", "gpu_hours_per_trillion_tokens"};

std::string key_of(const std::string& assignment) { return assignment.substr(0, assignment.find('=')); }

void add_unique(std::vector<std::string>& values, const std::string& v) {
  if (std::find(values.begin(), values.end(), v) == values.end()) values.push_back(v);
}

// What a user would try for each searched key, and the scenario's own value.
std::vector<Axis> default_axes(const Scenario& s) {
  Axis pp{"plan.pp", {}}, ep{"plan.ep", {}}, mbs{"batch.micro_batch_sequences", {"1", "2", "4"}},
      kind{"schedule.kind", {}}, sms{"comm.sms", {"10", "20", "32"}},
      overlap{"plan.dp_overlap", {"false", "true"}};
  for (int64_t p = 1; p <= 64; p *= 2)
    if (s.gpus % p == 0) pp.values.push_back(std::to_string(p));
  for (std::string_view name : schedule_names()) kind.values.emplace_back(name);
  for (int64_t e = 1; e <= std::min<int64_t>(256, s.gpus); e *= 2) ep.values.push_back(std::to_string(e));
  add_unique(pp.values, std::to_string(s.plan.pp));
  add_unique(ep.values, std::to_string(s.plan.ep));
  add_unique(mbs.values, std::to_string(s.batch.micro_batch_sequences));
  add_unique(kind.values, to_string(s.schedule.kind));
  add_unique(sms.values, std::to_string(s.comm.sms));
  add_unique(overlap.values, s.plan.dp_overlap ? "true" : "false");
  return {pp, ep, mbs, kind, sms, overlap};
}

// The scenario's own value of a searched key, as the axes write it.
std::string own_value(const Scenario& s, const std::string& key) {
  if (key == "plan.pp") return std::to_string(s.plan.pp);
  if (key == "plan.ep") return std::to_string(s.plan.ep);
  if (key == "batch.micro_batch_sequences") return std::to_string(s.batch.micro_batch_sequences);
  if (key == "schedule.kind") return to_string(s.schedule.kind);
  if (key == "comm.sms") return std::to_string(s.comm.sms);
  if (key == "plan.dp_overlap") return s.plan.dp_overlap ? "true" : "false";
  return "";
}

struct Candidate {
  std::vector<std::string> sets;  // the searched keys' "key=value"
  std::string status = "ok";      // ok, infeasible, pruned, error
  std::string reason_key;         // infeasible: the key that fails (or "memory headroom")
  std::string reason;
  double bound = 0;               // StepBound: no simulation can give a shorter step
  double memory = 0;              // peak bytes per GPU
  nlohmann::json result;          // simulate --json
  double step() const { return result.is_object() ? result.value("step_time_s", INFINITY) : INFINITY; }
};

std::string value_of(const Candidate& c, const std::string& key) {
  for (const std::string& s : c.sets)
    if (key_of(s) == key) return s.substr(key.size() + 1);
  return "";
}

// Feasibility and the step's lower bound, in this process (no simulation): the scenario's
// validation (the key that fails), then the memory headroom.
void examine(const std::string& path, const std::vector<std::string>& fixed, double headroom, Candidate& c) {
  std::vector<std::string> sets = fixed;
  sets.insert(sets.end(), c.sets.begin(), c.sets.end());
  StagePartition part;
  const Result<Scenario> loaded = load_scenario(path, sets, &part);
  if (!loaded) {
    c.status = "infeasible";
    c.reason_key = loaded.error().key;
    c.reason = loaded.error().message();
    return;
  }
  const Scenario& s = loaded.value();
  for (const RankMemory& m : memory_per_rank(s, part)) c.memory = std::max(c.memory, m.total());
  const double hbm = s.cluster.gpu.hbm_gbytes * 1e9;
  if (c.memory > (1 - headroom) * hbm) {
    c.status = "infeasible";
    c.reason_key = "memory headroom";
    c.reason = strprintf("needs %.1f GB of %.0f GB: less than %.0f%% of HBM left free", c.memory / 1e9, hbm / 1e9, 100 * headroom);
    return;
  }
  const StepPlan plan = make_plan(s, &part);
  c.bound = step_lower_bound(s, plan.workload, plan.program).step_s;
}

// examine() for every candidate, on `jobs` threads; the processes of an MPI launch split them.
void examine_all(const std::string& path, const std::vector<std::string>& fixed, double headroom, int jobs,
                 std::vector<Candidate>& cs) {
  const ProcessGroup& group = ProcessGroup::get();
  const std::vector<size_t> mine_idx = group.share(cs.size());
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mu;
  auto worker = [&] {
    for (size_t k = next++; k < mine_idx.size(); k = next++) try {
        check_interrupted();
        examine(path, fixed, headroom, cs[mine_idx[k]]);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mu);
        if (!failure) failure = std::current_exception();
      }
  };
  std::vector<std::thread> threads;
  for (int k = 0; k < std::max(1, jobs); ++k) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  if (failure) std::rethrow_exception(failure);
  check_interrupted();
  nlohmann::json mine = nlohmann::json::array();
  for (size_t i : mine_idx) mine.push_back({i, cs[i].status, cs[i].reason_key, cs[i].reason, cs[i].bound, cs[i].memory});
  if (group.size() == 1) return;
  for (const std::string& theirs : group.all_gather(mine.dump()))
    for (const nlohmann::json& e : nlohmann::json::parse(theirs)) {
      Candidate& c = cs[e[0].get<size_t>()];
      c.status = e[1];
      c.reason_key = e[2];
      c.reason = e[3];
      c.bound = e[4];
      c.memory = e[5];
    }
}

// Why plan a beats plan b, in the model's terms: the keys they differ in, and which part of the
// step (compute, exposed communication, bubble) differs most.
std::string explain(const Candidate& a, const Candidate& b, const std::vector<Axis>& axes) {
  std::string differs;
  for (const Axis& ax : axes)
    if (value_of(a, ax.key) != value_of(b, ax.key))
      differs += (differs.empty() ? "" : ", ") + ax.key + " " + value_of(b, ax.key) + " -> " + value_of(a, ax.key);
  auto part = [](const Candidate& c, const char* fraction) { return c.result.value(fraction, 0.0) * c.step(); };
  struct Term {
    const char* name;
    double a, b;
  };
  const Term terms[] = {{"compute", part(a, "compute_busy_fraction"), part(b, "compute_busy_fraction")},
                        {"exposed communication", part(a, "exposed_comm_fraction"), part(b, "exposed_comm_fraction")},
                        {"bubble", part(a, "bubble_fraction"), part(b, "bubble_fraction")}};
  const Term* biggest = &terms[0];
  for (const Term& t : terms)
    if (std::abs(t.b - t.a) > std::abs(biggest->b - biggest->a)) biggest = &t;
  std::string out = strprintf("The winner is %s faster (%s vs %s; %s). ", format_seconds(b.step() - a.step()).c_str(),
                              format_seconds(a.step()).c_str(), format_seconds(b.step()).c_str(),
                              differs.empty() ? "same searched keys" : differs.c_str());
  out += strprintf("Per GPU: compute %s vs %s, exposed communication %s vs %s, bubble %s vs %s: mostly %s.",
                   format_seconds(terms[0].a).c_str(), format_seconds(terms[0].b).c_str(), format_seconds(terms[1].a).c_str(),
                   format_seconds(terms[1].b).c_str(), format_seconds(terms[2].a).c_str(), format_seconds(terms[2].b).c_str(),
                   biggest->name);
  return out;
}

// One search: its text into t, its JSON returned. Throws InputException on bad options.
nlohmann::json search(const PlanOptions& o, std::string& t) {
  if (!(o.memory_headroom >= 0 && o.memory_headroom < 1))
    throw_input_error("<command line>", "--memory-headroom", "expected a fraction of HBM in [0, 1)");
  std::vector<std::string> fixed = o.overrides;
  for (const std::string& f : o.fix) {
    if (f.find('=') == std::string::npos || f.front() == '=')
      throw_input_error("<command line>", "--fix", "expected key=value, got '" + f + "'");
    fixed.push_back(f);
  }
  // The base: the scenario with the fixed keys. It must load (it is the plan the search starts
  // from); its own values join the searched ones, so its rank is known.
  std::vector<std::string> base_sets = fixed;
  auto base = load_scenario(o.path, fixed);
  if (!base) {
    // The scenario's own plan may not fit these keys (another GPU count, in capacity planning):
    // start from the simplest plan instead, if the user leaves those keys to the search.
    std::vector<std::string> simplest = fixed;
    for (const char* set : {"plan.pp=1", "plan.ep=1", "schedule.kind=1f1b", "batch.micro_batch_sequences=1"})
      if (std::none_of(fixed.begin(), fixed.end(), [&](const std::string& f) { return key_of(f) == key_of(set); }))
        simplest.push_back(set);
    auto fallback = load_scenario(o.path, simplest);
    if (!fallback) throw InputException(base.error());
    base = std::move(fallback);
    base_sets = simplest;
  }
  const Scenario& s = base.value();

  std::vector<Axis> axes;
  for (const Axis& a : default_axes(s))
    if (std::none_of(fixed.begin(), fixed.end(), [&](const std::string& f) { return key_of(f) == a.key; })) axes.push_back(a);
  for (const std::string& v : o.vary) {
    Axis a = parse_axis(v, "--vary");
    if (std::any_of(fixed.begin(), fixed.end(), [&](const std::string& f) { return key_of(f) == a.key; }))
      throw_input_error("<command line>", "--vary " + a.key, "the key is also fixed (--fix or --set): search it or fix it");
    auto it = std::find_if(axes.begin(), axes.end(), [&](const Axis& x) { return x.key == a.key; });
    if (it != axes.end()) *it = a;
    else axes.push_back(a);
  }
  if (axes.empty()) throw_input_error("<command line>", "--fix", "every searched key is fixed: nothing to search");
  // A --vary key the scenario refuses for every value (unknown, values of the wrong type) is a
  // mistake, not a search: one line. (A value refused for what it implies, e.g. a pipeline depth
  // that does not divide the GPUs, only makes its candidates infeasible, if another value loads.)
  for (const std::string& v : o.vary) {
    const Axis a = parse_axis(v, "--vary");
    std::optional<InputError> refused;
    for (const std::string& value : a.values) {
      std::vector<std::string> sets = base_sets;
      sets.push_back(a.key + "=" + value);
      const Result<Scenario> one = load_scenario(o.path, sets);
      const std::string& k = one ? std::string() : one.error().key;
      const bool key_at_fault = !one && !k.empty() && a.key.rfind(k, 0) == 0 && (a.key.size() == k.size() || a.key[k.size()] == '.');
      if (!key_at_fault) {
        refused.reset();
        break;
      }
      if (!refused) refused = one.error();
    }
    if (refused) throw InputException(*refused);
  }
  size_t count = 1;
  for (const Axis& a : axes) {
    count *= a.values.size();
    if (count > kMaxCandidates)
      throw_input_error("<command line>", "--vary", "more than " + std::to_string(kMaxCandidates) + " candidate plans: fix or narrow some keys");
  }

  std::vector<Candidate> candidates;
  for (auto& sets : cross_product(axes)) {
    candidates.emplace_back();
    candidates.back().sets = std::move(sets);
  }
  // The scenario's own plan among the candidates (simulated first, so its rank is exact).
  size_t own = candidates.size();
  for (size_t i = 0; i < candidates.size() && own == candidates.size(); ++i)
    if (std::all_of(axes.begin(), axes.end(), [&](const Axis& a) { return value_of(candidates[i], a.key) == own_value(s, a.key); }))
      own = i;

  // The CSV grows under a ".incomplete" name and takes its own only when the search is done: a
  // search cut short (Ctrl-C, a crash) never leaves a file that looks finished.
  const bool leader = ProcessGroup::get().leader();
  const std::string csv_partial = o.csv + ".incomplete";
  std::ofstream csv;
  auto csv_row = [&](const Candidate& c) {
    std::string row;
    for (const Axis& a : axes) row += csv_field(value_of(c, a.key)) + ",";
    row += c.status;
    for (const char* m : kMetrics) row += "," + (c.result.contains(m) ? strprintf("%.9g", c.result[m].get<double>()) : std::string());
    row += c.status == "infeasible" || c.bound == 0 ? std::string(",") : strprintf(",%.9g", c.bound);
    return row + "," + csv_field(c.reason) + "\n";
  };
  std::string csv_header;
  for (const Axis& a : axes) csv_header += csv_field(a.key) + ",";
  csv_header += "status";
  for (const char* m : kMetrics) csv_header += std::string(",") + m;
  csv_header += ",step_lower_bound_s,reason\n";
  if (!o.csv.empty() && leader) {
    csv.open(csv_partial, std::ios::trunc);
    if (!csv) throw_input_error("<command line>", "--csv", "cannot write '" + csv_partial + "'");
    csv << csv_header << std::flush;
  }

  // 1. Feasibility and a lower bound on the step, for every candidate, without simulating.
  const auto t0 = std::chrono::steady_clock::now();
  try {
    examine_all(o.path, fixed, o.memory_headroom, o.jobs, candidates);
  } catch (Interrupted& e) {
    if (csv.is_open()) e.detail += ": nothing examined is kept; " + csv_partial + " holds the header";
    throw;
  }
  const double examine_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Every candidate refused on the same key: the search's own input is wrong (an unknown key,
  // values of the wrong type) or nothing of this shape fits; one line says which.
  if (!candidates.empty() && std::all_of(candidates.begin(), candidates.end(), [&](const Candidate& c) {
        return c.status == "infeasible" && c.reason_key == candidates[0].reason_key;
      })) {
    if (csv.is_open()) {
      csv.close();
      std::filesystem::remove(csv_partial);
    }
    throw_input_error("<command line>", "plan", "every candidate plan was rejected, e.g. " + candidates[0].reason);
  }
  if (csv.is_open()) {
    for (const Candidate& c : candidates)
      if (c.status == "infeasible") csv << csv_row(c);
    csv << std::flush;
  }

  // 2. Simulate the feasible ones in order of their bounds, in batches, until every bound left is
  // above the `keep`-th fastest step simulated (and the scenario's own plan's): those plans cannot
  // enter the table, nor move the scenario's rank. Batches have a fixed size, so what is simulated
  // and pruned does not depend on -j or on the number of processes.
  std::vector<size_t> order;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (candidates[i].status == "ok" && i != own) order.push_back(i);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return candidates[a].bound < candidates[b].bound; });
  if (own < candidates.size() && candidates[own].status == "ok") order.insert(order.begin(), own);
  const size_t keep = idx(std::max(o.top, 2));
  std::vector<double> fastest;  // simulated steps, sorted
  auto threshold = [&]() -> double {
    if (!o.prune || fastest.size() < keep) return INFINITY;
    const double own_step = own < candidates.size() ? candidates[own].step() : 0.0;
    return std::max(fastest[keep - 1], std::isfinite(own_step) ? own_step : 0.0);
  };
  auto command = [&](const Candidate& c) {
    std::string cmd = shell_quote(o.self) + " simulate " + shell_quote(o.path) + " --json --fidelity " + shell_quote(o.fidelity) +
                      strprintf(" --tokens %.17g", o.training_tokens);
    for (const std::string& f : fixed) cmd += " --set " + shell_quote(f);
    for (const std::string& set : c.sets) cmd += " --set " + shell_quote(set);
    return cmd;
  };
  auto label = [&](const Candidate& c) {
    std::string l;
    for (const std::string& set : c.sets) l += set.substr(set.find('.') + 1) + " ";
    return l;
  };
  Progress progress(order.size());
  size_t next = 0, simulated = 0;
  int errors = 0;
  // A simulation's outcome into its candidate, and its CSV row.
  auto settle = [&](Candidate& c, const ChildRun& r) {
    if (r.code == 0) c.result = nlohmann::json::parse(r.out, nullptr, false);
    if (r.code == 2) {  // the bound's checks passed: the simulator refused (e.g. its calibration)
      c.status = "infeasible";
      c.reason = r.err;
      c.reason_key = "simulate";
    } else if (r.code != 0 || c.result.is_discarded() || !c.result.contains("step_time_s")) {
      c.status = "error";
      c.reason = r.code != 0 ? (r.err.empty() ? "exit " + std::to_string(r.code) : r.err) : "unreadable simulate output";
      c.result = nlohmann::json();
      ++errors;
    }
    if (csv.is_open()) csv << csv_row(c) << std::flush;
  };
  const bool alone = ProcessGroup::get().size() == 1;
  try {
    while (next < order.size() && candidates[order[next]].bound <= threshold()) {
      std::vector<size_t> batch;
      while (batch.size() < kBatch && next < order.size() && candidates[order[next]].bound <= threshold()) batch.push_back(order[next++]);
      std::vector<std::string> commands;
      for (size_t i : batch) commands.push_back(command(candidates[i]));
      // One process settles each run as it finishes (a cut search keeps its rows); processes of
      // an MPI launch settle the whole batch once they have exchanged it.
      const std::vector<ChildRun> runs = run_children(commands, o.jobs, [&](size_t k, const ChildRun& r) {
        progress.step(label(candidates[batch[k]]));
        if (alone) settle(candidates[batch[k]], r);
      });
      progress.reach(simulated += batch.size());
      for (size_t k = 0; k < batch.size(); ++k) {
        Candidate& c = candidates[batch[k]];
        if (!alone) settle(c, runs[k]);
        if (c.status == "ok") fastest.insert(std::upper_bound(fastest.begin(), fastest.end(), c.step()), c.step());
      }
    }
  } catch (Interrupted& e) {
    progress.finish();
    if (csv.is_open()) e.detail += ": the candidates examined so far are in " + csv_partial;
    throw;
  }
  for (size_t k = next; k < order.size(); ++k) {
    candidates[order[k]].status = "pruned";
    candidates[order[k]].reason = strprintf("its step cannot be below %s, slower than the %zu fastest simulated",
                                            format_seconds(candidates[order[k]].bound).c_str(), keep);
  }
  progress.skip(order.size() - next);
  progress.finish();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  std::map<std::string, int> infeasible;
  std::map<std::string, std::string> example;
  for (const Candidate& c : candidates)
    if (c.status == "infeasible") {
      ++infeasible[c.reason_key];
      example.try_emplace(c.reason_key, c.reason);
    }
  const size_t pruned = order.size() - next;
  std::vector<size_t> ranked;
  for (size_t i = 0; i < candidates.size(); ++i)
    if (candidates[i].status == "ok" && !candidates[i].result.is_null()) ranked.push_back(i);
  std::stable_sort(ranked.begin(), ranked.end(), [&](size_t a, size_t b) { return candidates[a].step() < candidates[b].step(); });
  int own_rank = -1;
  for (size_t k = 0; k < ranked.size(); ++k)
    if (ranked[k] == own) own_rank = static_cast<int>(k) + 1;

  // Text.
  int infeasible_total = 0;
  for (const auto& [k, n] : infeasible) infeasible_total += n;
  t += strprintf("Plan search for %s on %lld x %s: %zu candidate plans (%s)\n", s.name.c_str(), static_cast<long long>(s.gpus),
                 s.cluster.gpu.name.c_str(), candidates.size(), [&] {
                   std::string keys;
                   for (const Axis& a : axes) keys += (keys.empty() ? "" : " x ") + a.key + " " + std::to_string(a.values.size());
                   return keys;
                 }().c_str());
  const int processes = ProcessGroup::get().size();
  t += strprintf("  infeasible %d, pruned %zu (their step's lower bound is above the %zu fastest simulated), simulated %zu "
                 "(ranked %zu, failed %d); %.1f s with -j %d%s\n",
                 infeasible_total, pruned, keep, simulated, ranked.size(), errors, wall, o.jobs,
                 processes > 1 ? strprintf(" on each of %d processes", processes).c_str() : "");
  for (const auto& [k, n] : infeasible)
    t += strprintf("    %5d  %-28s e.g. %s\n", n, (k.empty() ? "(whole file)" : k).c_str(), example[k].c_str());
  // A column per searched key, as wide as its name or its widest value.
  std::vector<int> widths;
  for (const Axis& a : axes) {
    size_t w = a.key.size() - a.key.find('.') - 1;
    for (const std::string& v : a.values) w = std::max(w, v.size());
    widths.push_back(static_cast<int>(w));
  }
  std::string head = "  rank ";
  for (size_t k = 0; k < axes.size(); ++k) head += strprintf("%-*s ", widths[k], axes[k].key.substr(axes[k].key.find('.') + 1).c_str());
  t += head + strprintf("%10s %9s %6s %7s %7s %7s %10s\n", "step", "tok/s/GPU", "MFU%", "mem_GB", "bubble%", "exposed%", "GPUh/Ttok");
  auto row_text = [&](size_t k, size_t i) {
    const Candidate& c = candidates[i];
    std::string row = strprintf("  %4zu ", k + 1);
    for (size_t a = 0; a < axes.size(); ++a) row += strprintf("%-*s ", widths[a], value_of(c, axes[a].key).c_str());
    return row + strprintf("%10s %9.0f %6.1f %7.1f %7.1f %7.1f %10.0f%s\n", format_seconds(c.step()).c_str(),
                           c.result.value("tokens_per_s_per_gpu", 0.0), 100 * c.result.value("mfu_causal", 0.0),
                           c.result.value("memory_peak_bytes", 0.0) / 1e9, 100 * c.result.value("bubble_fraction", 0.0),
                           100 * c.result.value("exposed_comm_fraction", 0.0),
                           c.result.value("gpu_hours_per_trillion_tokens", 0.0), i == own ? "  <- the scenario's plan" : "");
  };
  for (size_t k = 0; k < ranked.size() && k < idx(o.top); ++k) t += row_text(k, ranked[k]);
  if (own_rank > o.top) t += "   ...\n" + row_text(idx(own_rank - 1), own);
  if (own == candidates.size())
    t += "  The scenario's own plan is not among the candidates (a --vary left its value out).\n";
  else if (own_rank < 0)
    t += "  The scenario's own plan is " + candidates[own].status + ": " + candidates[own].reason + "\n";
  else
    t += strprintf("  The scenario's own plan ranks %d of %zu.\n", own_rank, ranked.size());
  // The runner-up: the fastest plan slower than the winner (plans that tie it differ in keys
  // that do not matter there, e.g. dp_overlap with one pipeline rank).
  std::string why;
  size_t ties = 0;
  while (ties + 1 < ranked.size() && candidates[ranked[ties + 1]].step() == candidates[ranked[0]].step()) ++ties;
  if (ties > 0)
    why = strprintf("%zu plan%s the winner to the last digit (the keys they differ in do not change the step). ", ties,
                    ties == 1 ? " ties" : "s tie");
  if (ties + 1 < ranked.size()) why += "Against the runner-up: " + explain(candidates[ranked[0]], candidates[ranked[ties + 1]], axes);
  if (!why.empty()) t += "  " + why + "\n";
  // And against the plan the user brought, when another wins.
  std::string why_not_own;
  if (own_rank > 1) {
    why_not_own = "Against the scenario's own plan: " + explain(candidates[ranked[0]], candidates[own], axes);
    t += "  " + why_not_own + "\n";
  }

  // Files: the CSV under its own name, every candidate in order; the growing one goes.
  if (csv.is_open()) {
    csv.close();
    std::string text = csv_header, failure;
    for (const Candidate& c : candidates) text += csv_row(c);
    if (!write_file(o.csv, text, &failure)) throw_input_error("<command line>", "--csv", "cannot write '" + o.csv + "': " + failure);
    std::filesystem::remove(csv_partial);
  }
  if (!o.write_best.empty() && leader) {
    if (ranked.empty()) throw_input_error("<command line>", "--write-best", "no plan fits: nothing to write");
    std::vector<std::string> sets = fixed;
    const Candidate& best = candidates[ranked[0]];
    sets.insert(sets.end(), best.sets.begin(), best.sets.end());
    std::string header = "The fastest of " + std::to_string(ranked.size()) + " plans that fit, found by `tandem plan` from " +
                         std::filesystem::path(o.path).filename().string() + ":";
    for (const std::string& set : sets) header += "\n  --set " + set;
    header += strprintf("\npredicted step time %s (tandem %s)", format_seconds(best.step()).c_str(), TANDEM_VERSION);
    write_scenario_card(o.path, sets, o.write_best, header,
                        "the fastest plan tandem plan found for " + s.name + " (" + format_seconds(best.step()) + " per step)");
    t += "  best plan written as a scenario: " + o.write_best + "\n";
  }

  // JSON.
  nlohmann::json keys = nlohmann::json::array(), plans = nlohmann::json::array(), reasons = nlohmann::json::object();
  for (const Axis& a : axes) keys.push_back(a.key);
  for (const auto& [k, n] : infeasible) reasons[k.empty() ? "(whole file)" : k] = {{"count", n}, {"example", example[k]}};
  for (size_t k = 0; k < ranked.size(); ++k) {
    const Candidate& c = candidates[ranked[k]];
    nlohmann::json p = {{"rank", k + 1}, {"scenario_plan", ranked[k] == own}};
    for (const Axis& a : axes) p[a.key] = value_of(c, a.key);
    for (const char* m : {"step_time_s", "tokens_per_s_per_gpu", "mfu_causal", "memory_peak_bytes", "bubble_fraction",
                          "exposed_comm_fraction", "gpu_hours_per_trillion_tokens"})
      p[m] = c.result.value(m, 0.0);
    p["step_lower_bound_s"] = c.bound;
    plans.push_back(p);
  }
  return nlohmann::json{{"command", "plan"},
                        {"scenario", s.name},
                        {"searched", keys},
                        {"fixed", fixed},
                        {"enumerated", candidates.size()},
                        {"infeasible", infeasible_total},
                        {"infeasible_by_key", reasons},
                        {"failed", errors},
                        {"failed_runs", [&] {
                           nlohmann::json f = nlohmann::json::array();
                           for (const Candidate& c : candidates)
                             if (c.status == "error") f.push_back(label(c) + "-> " + c.reason);
                           return f;
                         }()},
                        {"pruned", pruned},
                        {"simulated", simulated},
                        {"ranked", ranked.size()},
                        {"memory_headroom", o.memory_headroom},
                        {"scenario_plan_rank", own_rank},
                        {"why_the_winner_wins", why},
                        {"why_not_the_scenario_plan", why_not_own},
                        {"plans", plans},
                        {"wall_s", wall},
                        {"examine_wall_s", examine_wall},
                        {"jobs", o.jobs},
                        {"processes", processes}};
}

// Capacity: the best plan at each GPU count, smallest first, until one meets the deadline (or
// the budget). Days, GPU-hours and cost follow from the best plan's throughput.
nlohmann::json capacity(const PlanOptions& o, std::string& t) {
  if (!(o.days > 0) && !(o.budget_usd > 0))
    throw_input_error("<command line>", "--gpus", "give --days (a deadline) or --budget-usd with a list of GPU counts");
  if (!(o.training_tokens > 0) || !std::isfinite(o.training_tokens))
    throw_input_error("<command line>", "--tokens", "expected a positive number of training tokens");
  std::vector<int64_t> counts;
  for (const std::string& v : parse_axis("gpus=" + o.gpu_counts, "--gpus").values) {
    char* end = nullptr;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (!end || *end || n <= 0) throw_input_error("<command line>", "--gpus", "expected GPU counts such as 1024,2048,4096, got '" + v + "'");
    counts.push_back(n);
  }
  std::sort(counts.begin(), counts.end());
  auto base = load_scenario(o.path, o.overrides);
  if (!base) throw InputException(base.error());
  const double price = base.value().cluster.price_per_gpu_hour;
  const std::string budget = format_count(o.training_tokens);
  t += strprintf("Capacity for %s: %s tokens%s%s, at $%.2f per GPU-hour\n", base.value().name.c_str(), budget.c_str(),
                 o.days > 0 ? strprintf(" within %g days", o.days).c_str() : "",
                 o.budget_usd > 0 ? strprintf(" for at most %.2f M$", o.budget_usd / 1e6).c_str() : "", price);
  t += strprintf("  %8s  %-58s %10s %8s %12s %10s  %s\n", "GPUs", "best plan", "step", "days", "GPU-hours", "cost M$", "meets");
  nlohmann::json tried = nlohmann::json::array();
  int64_t answer = -1;
  for (int64_t n : counts) {
    PlanOptions one = o;
    one.fix.push_back("gpus=" + std::to_string(n));
    one.top = 1;  // only the best plan counts here: prune against it
    std::string search_text;
    nlohmann::json r;
    try {
      r = search(one, search_text);
    } catch (const InputException& e) {  // this count cannot hold the scenario at all
      t += strprintf("  %8lld  %s\n", static_cast<long long>(n), e.error().message().c_str());
      tried.push_back({{"gpus", n}, {"status", e.error().message()}});
      continue;
    }
    if (r["plans"].empty()) {
      t += strprintf("  %8lld  no plan fits (%d candidates infeasible)\n", static_cast<long long>(n), r["infeasible"].get<int>());
      tried.push_back({{"gpus", n}, {"status", "no plan fits"}});
      continue;
    }
    const nlohmann::json& best = r["plans"][0];
    const double tokens_per_s = best["tokens_per_s_per_gpu"].get<double>() * static_cast<double>(n);
    const double days = o.training_tokens / tokens_per_s / 86400.0;
    const double gpu_hours = best["gpu_hours_per_trillion_tokens"].get<double>() * o.training_tokens / 1e12;
    const double cost = gpu_hours * price;
    const bool meets = (!(o.days > 0) || days <= o.days) && (!(o.budget_usd > 0) || cost <= o.budget_usd);
    std::string plan;
    for (const auto& [k, v] : best.items())
      if (v.is_string()) plan += (plan.empty() ? "" : " ") + k.substr(k.find('.') + 1) + "=" + v.get<std::string>();
    t += strprintf("  %8lld  %-58.58s %10s %8.1f %12.3g %10.2f  %s\n", static_cast<long long>(n), plan.c_str(),
                   format_seconds(best["step_time_s"].get<double>()).c_str(), days, gpu_hours, cost / 1e6, meets ? "yes" : "no");
    tried.push_back({{"gpus", n}, {"status", "ok"}, {"best_plan", best}, {"days", days}, {"gpu_hours", gpu_hours},
                     {"cost_usd", cost}, {"meets", meets}, {"ranked", r["ranked"]}, {"enumerated", r["enumerated"]}});
    if (meets) {
      answer = n;
      break;  // the smallest count that meets it: larger ones are not needed
    }
  }
  t += answer > 0 ? strprintf("  -> %lld GPUs: the smallest count tried whose best plan meets it\n", static_cast<long long>(answer))
                  : std::string("  -> no GPU count tried meets it\n");
  return nlohmann::json{{"command", "plan_capacity"}, {"scenario", base.value().name}, {"training_tokens", o.training_tokens},
                        {"days", o.days}, {"budget_usd", o.budget_usd}, {"price_per_gpu_hour", price}, {"tried", tried},
                        {"gpus", answer > 0 ? nlohmann::json(answer) : nlohmann::json(nullptr)}};
}

}  // namespace

Result<nlohmann::json> plan_command(const PlanOptions& o, std::string& t) {
  return catch_input_errors([&]() -> nlohmann::json { return o.gpu_counts.empty() ? search(o, t) : capacity(o, t); });
}

}  // namespace tandem
