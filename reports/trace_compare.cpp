#include "reports/trace_compare.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <tuple>

#include "common/format.h"
#include "common/signed_index.h"

namespace tandem {

namespace {

auto key_of(const TaskIdentity& t) {
  return std::tie(t.rank, t.stream, t.kind, t.block, t.micro_batch, t.stage, t.slot, t.occurrence);
}

struct Side {
  std::map<int, int> gpu_of_rank;  // rank -> the GPU compared
  std::vector<std::pair<TaskIdentity, const TraceEvent*>> tasks;
};

// One GPU per rank (its lowest-numbered), its tasks with their identities.
Side side_of(const Trace& t) {
  Side s;
  s.gpu_of_rank = t.gpu_per_rank();
  std::vector<const TraceEvent*> chosen;
  for (const TraceEvent& e : t.events)
    if (s.gpu_of_rank.at(e.rank) == e.gpu) chosen.push_back(&e);
  std::stable_sort(chosen.begin(), chosen.end(),
                   [](const TraceEvent* x, const TraceEvent* y) { return std::tie(x->rank, x->start) < std::tie(y->rank, y->start); });
  std::map<std::tuple<int, std::string, std::string, int, int, int, int>, int> seen;
  for (const TraceEvent* e : chosen) {
    TaskIdentity id{e->rank, e->stream, e->kind, e->block, e->micro_batch, e->stage, e->slot, 0};
    id.occurrence = seen[{id.rank, id.stream, id.kind, id.block, id.micro_batch, id.stage, id.slot}]++;
    s.tasks.push_back({id, e});
  }
  return s;
}

}  // namespace

std::string TaskIdentity::describe() const {
  std::string out = "rank " + std::to_string(rank) + " " + kind;
  if (block >= 0) out += " block " + std::to_string(block);
  if (micro_batch >= 0) out += " mb " + std::to_string(micro_batch);
  if (stage >= 0) out += " stage " + std::to_string(stage);
  out += slot >= 0 ? " slot " + std::to_string(slot) : " end-of-step";
  if (occurrence > 0) out += " #" + std::to_string(occurrence + 1);
  return out;
}

Result<TraceComparison> compare_traces(const Trace& a, const std::string& a_file, const Trace& b,
                                       const std::string& b_file, int top) {
  if (a.scenario != b.scenario)
    return InputError{b_file, "otherData.scenario",
                      "a trace of scenario '" + b.scenario + "', but " + a_file + " is of '" + a.scenario +
                          "': compare two traces of one scenario"};
  if (!a.program.empty() && !b.program.empty() && a.program != b.program)
    return InputError{b_file, "otherData.program",
                      "scenario '" + b.scenario + "' with another program than " + a_file +
                          " (its stage partition, pipeline, batch or schedule differ: other --set overrides, or a "
                          "calibration that moved the balancer's stage boundaries): the tasks cannot align"};
  TraceComparison c;
  c.a_file = a_file;
  c.b_file = b_file;
  c.a_engine = a.engine;
  c.b_engine = b.engine;
  c.scenario = a.scenario;
  c.program = a.program.empty() ? b.program : a.program;
  const Side sa = side_of(a), sb = side_of(b);

  std::map<std::tuple<int, std::string, std::string, int, int, int, int, int>, const TraceEvent*> in_b;
  for (const auto& [id, e] : sb.tasks) in_b.emplace(key_of(id), e);
  std::map<std::string, KindComparison> kinds;
  std::map<int, RankComparison> ranks;
  auto rank_entry = [&](int r) -> RankComparison& {
    RankComparison& rc = ranks[r];
    rc.rank = r;
    if (auto it = sa.gpu_of_rank.find(r); it != sa.gpu_of_rank.end()) rc.a_gpu = it->second;
    if (auto it = sb.gpu_of_rank.find(r); it != sb.gpu_of_rank.end()) rc.b_gpu = it->second;
    return rc;
  };
  std::vector<AlignedTask> aligned;
  for (const auto& [id, e] : sa.tasks) {
    RankComparison& rc = rank_entry(id.rank);
    const double d = e->end - e->start;
    (e->stream == "compute" ? rc.a_compute_s : rc.a_comm_s) += d;
    rc.a_end_s = std::max(rc.a_end_s, e->end);
    c.a_step_s = std::max(c.a_step_s, e->end);
    auto it = in_b.find(key_of(id));
    if (it == in_b.end()) {
      c.only_in_a.push_back(id);
      continue;
    }
    const double db = it->second->end - it->second->start;
    aligned.push_back({id, d, db});
    KindComparison& k = kinds[id.kind];
    k.kind = id.kind;
    ++k.tasks;
    k.a_s += d;
    k.b_s += db;
    in_b.erase(it);
  }
  for (const auto& [id, e] : sb.tasks) {
    RankComparison& rc = rank_entry(id.rank);
    (e->stream == "compute" ? rc.b_compute_s : rc.b_comm_s) += e->end - e->start;
    rc.b_end_s = std::max(rc.b_end_s, e->end);
    c.b_step_s = std::max(c.b_step_s, e->end);
    if (in_b.count(key_of(id))) c.only_in_b.push_back(id);
  }
  c.aligned = static_cast<int>(aligned.size());
  const double nranks = std::max<double>(1, static_cast<double>(ranks.size()));
  for (auto& [name, k] : kinds) {
    k.a_s /= nranks;
    k.b_s /= nranks;
    c.kinds.push_back(k);
  }
  std::stable_sort(c.kinds.begin(), c.kinds.end(), [](const auto& x, const auto& y) { return x.a_s > y.a_s; });
  for (auto& [r, rc] : ranks) c.ranks.push_back(rc);
  std::stable_sort(aligned.begin(), aligned.end(),
                   [](const AlignedTask& x, const AlignedTask& y) { return std::abs(x.b_s - x.a_s) > std::abs(y.b_s - y.a_s); });
  aligned.resize(std::min(aligned.size(), idx(std::max(0, top))));
  c.most_different = std::move(aligned);
  return c;
}

TraceComparison compare_with_measured_kinds(const Trace& a, const std::string& a_file, const std::vector<MeasuredKind>& b,
                                            const std::string& b_file, const std::string& b_engine,
                                            const std::vector<int>& blocks) {
  TraceComparison c;
  c.kinds_only = true;
  c.a_file = a_file;
  c.b_file = b_file;
  c.a_engine = a.engine;
  c.b_engine = b_engine;
  c.scenario = a.scenario;
  c.program = a.program;
  const Side sa = side_of(a);
  std::map<std::string, std::pair<int, double>> a_kinds;  // kind -> tasks, seconds
  for (const auto& [id, e] : sa.tasks) {
    c.a_step_s = std::max(c.a_step_s, e->end);
    if (!blocks.empty() && std::find(blocks.begin(), blocks.end(), id.block) == blocks.end()) continue;
    auto& [n, secs] = a_kinds[id.kind];
    ++n;
    secs += e->end - e->start;
  }
  for (const MeasuredKind& m : b) {
    auto it = a_kinds.find(m.kind);
    if (it == a_kinds.end()) {
      c.kinds_only_in_b.push_back(m.kind);
      continue;
    }
    c.kinds.push_back({m.kind, it->second.first, it->second.second / it->second.first, m.seconds});
    c.aligned += it->second.first;
  }
  for (const auto& [kind, v] : a_kinds)
    if (std::none_of(b.begin(), b.end(), [&](const MeasuredKind& m) { return m.kind == kind; })) c.kinds_only_in_a.push_back(kind);
  std::stable_sort(c.kinds.begin(), c.kinds.end(), [](const auto& x, const auto& y) { return x.a_s > y.a_s; });
  return c;
}

namespace {
std::string ratio(double a, double b) { return a > 0 ? strprintf("%.3g", b / a) : std::string("-"); }
}  // namespace

std::string comparison_text(const TraceComparison& c) {
  std::string out;
  if (c.kinds_only) {
    out += "A: " + c.a_file + " (" + c.a_engine + ")\nB: " + c.b_file + " (" + c.b_engine +
           ": no task identities; its kernels classified into task kinds by the kernel rules)\n";
    out += "scenario " + c.scenario + "\n";
    out += "Per task kind: mean time of one task (A: its tasks of the kind on the layers B measured; B: per measured instance)\n";
    out += strprintf("  %-18s %6s %12s %12s %8s\n", "kind", "A tasks", "A", "B", "B/A");
    for (const KindComparison& k : c.kinds)
      out += strprintf("  %-18s %6d %12s %12s %8s\n", k.kind.c_str(), k.tasks, format_seconds(k.a_s).c_str(),
                       format_seconds(k.b_s).c_str(), ratio(k.a_s, k.b_s).c_str());
    auto kinds = [](const std::vector<std::string>& v) {
      std::string s;
      for (const auto& k : v) s += (s.empty() ? "" : ", ") + k;
      return s.empty() ? std::string("none") : s;
    };
    out += "Kinds only in A: " + kinds(c.kinds_only_in_a) + "\nKinds only in B: " + kinds(c.kinds_only_in_b) + "\n";
    return out;
  }
  out += "A: " + c.a_file + " (" + c.a_engine + ")\nB: " + c.b_file + " (" + c.b_engine + ")\n";
  out += "scenario " + c.scenario + (c.program.empty() ? "" : ", program " + c.program.substr(0, 12)) + "\n";
  out += strprintf("  aligned tasks       %d on %zu pipeline ranks (one GPU per rank: its lowest-numbered)\n", c.aligned,
                   c.ranks.size());
  out += strprintf("  unaligned tasks     %zu only in A, %zu only in B\n", c.only_in_a.size(), c.only_in_b.size());
  out += strprintf("  step time           A %s   B %s   B/A %s\n", format_seconds(c.a_step_s).c_str(),
                   format_seconds(c.b_step_s).c_str(), ratio(c.a_step_s, c.b_step_s).c_str());
  out += "Per task kind (aligned tasks, per GPU per step; most of A first)\n";
  out += strprintf("  %-18s %6s %12s %12s %8s\n", "kind", "tasks", "A", "B", "B/A");
  for (const KindComparison& k : c.kinds)
    out += strprintf("  %-18s %6d %12s %12s %8s\n", k.kind.c_str(), k.tasks, format_seconds(k.a_s).c_str(),
                     format_seconds(k.b_s).c_str(), ratio(k.a_s, k.b_s).c_str());
  out += "Per pipeline rank (compute and comm stream busy time; end: its last task)\n";
  out += strprintf("  %-5s %12s %12s %8s %12s %12s %12s %12s\n", "rank", "A compute", "B compute", "B/A", "A comm", "B comm",
                   "A end", "B end");
  for (const RankComparison& r : c.ranks)
    out += strprintf("  %-5d %12s %12s %8s %12s %12s %12s %12s\n", r.rank, format_seconds(r.a_compute_s).c_str(),
                     format_seconds(r.b_compute_s).c_str(), ratio(r.a_compute_s, r.b_compute_s).c_str(),
                     format_seconds(r.a_comm_s).c_str(), format_seconds(r.b_comm_s).c_str(),
                     format_seconds(r.a_end_s).c_str(), format_seconds(r.b_end_s).c_str());
  if (!c.most_different.empty()) {
    out += "Tasks that differ most (|B - A|)\n";
    for (const AlignedTask& t : c.most_different)
      out += strprintf("  %-52s A %10s  B %10s  B/A %s\n", t.id.describe().c_str(), format_seconds(t.a_s).c_str(),
                       format_seconds(t.b_s).c_str(), ratio(t.a_s, t.b_s).c_str());
  }
  auto list = [&](const char* side, const std::vector<TaskIdentity>& ids) {
    if (ids.empty()) return;
    out += strprintf("Only in %s (%zu tasks)\n", side, ids.size());
    for (const TaskIdentity& id : ids) out += "  " + id.describe() + "\n";
  };
  list("A", c.only_in_a);
  list("B", c.only_in_b);
  return out;
}

namespace {
nlohmann::json identity_json(const TaskIdentity& t) {
  return {{"rank", t.rank}, {"stream", t.stream}, {"kind", t.kind}, {"block", t.block}, {"micro_batch", t.micro_batch},
          {"stage", t.stage}, {"slot", t.slot}, {"occurrence", t.occurrence}};
}
}  // namespace

nlohmann::json comparison_json(const TraceComparison& c) {
  nlohmann::json kinds = nlohmann::json::array(), ranks = nlohmann::json::array(), top = nlohmann::json::array(),
                 only_a = nlohmann::json::array(), only_b = nlohmann::json::array();
  for (const KindComparison& k : c.kinds)
    kinds.push_back({{"kind", k.kind}, {"tasks", k.tasks}, {"a_s", k.a_s}, {"b_s", k.b_s},
                     {"ratio", k.a_s > 0 ? nlohmann::json(k.b_s / k.a_s) : nlohmann::json(nullptr)}});
  for (const RankComparison& r : c.ranks)
    ranks.push_back({{"rank", r.rank}, {"a_gpu", r.a_gpu}, {"b_gpu", r.b_gpu}, {"a_compute_s", r.a_compute_s},
                     {"b_compute_s", r.b_compute_s}, {"a_comm_s", r.a_comm_s}, {"b_comm_s", r.b_comm_s},
                     {"a_end_s", r.a_end_s}, {"b_end_s", r.b_end_s}});
  for (const AlignedTask& t : c.most_different) {
    nlohmann::json j = identity_json(t.id);
    j["a_s"] = t.a_s;
    j["b_s"] = t.b_s;
    top.push_back(j);
  }
  for (const TaskIdentity& t : c.only_in_a) only_a.push_back(identity_json(t));
  for (const TaskIdentity& t : c.only_in_b) only_b.push_back(identity_json(t));
  return {{"command", "compare"},
          {"kinds_only", c.kinds_only},
          {"kinds_only_in_a", c.kinds_only_in_a},
          {"kinds_only_in_b", c.kinds_only_in_b},
          {"a", {{"file", c.a_file}, {"engine", c.a_engine}, {"step_time_s", c.a_step_s}}},
          {"b", {{"file", c.b_file}, {"engine", c.b_engine}, {"step_time_s", c.b_step_s}}},
          {"scenario", c.scenario},
          {"program", c.program},
          {"aligned_tasks", c.aligned},
          {"kinds", kinds},
          {"ranks", ranks},
          {"most_different", top},
          {"only_in_a", only_a},
          {"only_in_b", only_b}};
}

}  // namespace tandem
