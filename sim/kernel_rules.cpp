#include "sim/kernel_rules.h"

#include <algorithm>
#include <map>
#include <queue>
#include <set>
#include <tuple>
#include <unordered_map>

#include <yaml-cpp/yaml.h>

#include "common/card_reader.h"
#include "common/sha256.h"
#include "common/signed_index.h"
#include "sim/shipped_data.h"

namespace tandem {

bool is_kernel_op_class(std::string_view op) {
  return std::find(kKernelOpClasses.begin(), kKernelOpClasses.end(), op) != kKernelOpClasses.end();
}

bool KernelRules::is_comm(std::string_view op) const {
  return std::find(comm_ops.begin(), comm_ops.end(), op) != comm_ops.end();
}

namespace {

constexpr uint64_t kMaxRulesBytes = uint64_t{16} << 20;
// libstdc++ compiles and runs std::regex recursively: a bounded pattern keeps both shallow.
constexpr size_t kMaxPatternChars = 2000;

std::string op_list() {
  std::string s;
  for (auto op : kKernelOpClasses) s += (s.empty() ? "" : ", ") + std::string(op);
  return s;
}

std::regex compile(const CardReader& r, const std::string& key, const std::string& pattern) {
  if (pattern.size() > kMaxPatternChars)
    r.fail(key, "regular expression longer than " + std::to_string(kMaxPatternChars) + " characters");
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    r.fail(key, "not a valid regular expression ('" + pattern + "'): " + e.what());
  }
}

std::optional<std::regex> optional_regex(CardReader& r, const char* key) {
  if (!r.has(key)) {
    r.ignore(key);
    return std::nullopt;
  }
  return compile(r, key, r.text(key));
}

// A list of strings under `key` (absent: empty).
std::vector<std::string> text_list(CardReader& r, const char* key) {
  if (r.has(key)) r.read_whole(key, "list of texts");
  r.ignore(key);
  std::vector<std::string> out;
  if (!r.has(key)) return out;
  const YAML::Node n = r.node()[key];
  if (!n.IsSequence()) r.fail(key, "expected a list of strings");
  for (size_t i = 0; i < n.size(); ++i) {
    const std::string k = std::string(key) + "[" + std::to_string(i) + "]";
    if (!n[i].IsScalar() || n[i].Scalar().empty()) r.fail(k, "expected a non-empty string");
    out.push_back(n[i].Scalar());
  }
  return out;
}

std::string op_class(const CardReader& r, const std::string& key, const std::string& op) {
  if (!is_kernel_op_class(op)) r.fail(key, "unknown op class '" + op + "' (one of: " + op_list() + ")");
  return op;
}

KernelRule read_rule(const YAML::Node& node, const std::string& file, size_t i) {
  const std::string where = "rules[" + std::to_string(i) + "]";
  CardReader r(node, file, where + ".");
  KernelRule rule;
  rule.op = op_class(r, "op", r.text("op"));
  rule.name = optional_regex(r, "name");
  rule.phase = optional_regex(r, "phase");
  rule.context = optional_regex(r, "context");
  rule.not_context = optional_regex(r, "not_context");
  constexpr int64_t kMaxGrid = 1'000'000'000'000'000'000;
  rule.min_grid = r.integer_or("min_grid", 0, 0, kMaxGrid);
  rule.max_grid = r.integer_or("max_grid", std::numeric_limits<int64_t>::max(), 0, kMaxGrid);
  if (rule.min_grid > rule.max_grid)
    r.fail("max_grid", "must not be below min_grid (" + std::to_string(rule.min_grid) + ")");
  rule.category = r.choice_or("category", "", {"kernel", "gpu_memcpy", "gpu_memset", "task"});
  r.finish();

  YAML::Emitter out;
  out << YAML::Flow << node;
  rule.text = where + " " + out.c_str();
  return rule;
}

KernelRules parse_rules(const std::string& path, const std::string& text) {
  CardReader r(parse_card_text(text, path), path);
  KernelRules rules;
  rules.file = path;
  rules.sha256 = sha256_hex(text);
  rules.name = r.text_or("name", "");
  r.ignore("description");
  const std::vector<std::string> ignore = text_list(r, "ignore_annotations");
  for (size_t i = 0; i < ignore.size(); ++i)
    rules.ignore_annotations.push_back(compile(r, "ignore_annotations[" + std::to_string(i) + "]", ignore[i]));
  const std::vector<std::string> comm = text_list(r, "comm_ops");
  for (size_t i = 0; i < comm.size(); ++i)
    rules.comm_ops.push_back(op_class(r, "comm_ops[" + std::to_string(i) + "]", comm[i]));

  r.read_whole("rules", "list of rules (rules[] keys)");
  if (!r.has("rules")) r.fail("rules", "missing (required)");
  const YAML::Node list = r.node()["rules"];
  if (!list.IsSequence() || list.size() == 0) r.fail("rules", "expected a non-empty list of rules");
  for (size_t i = 0; i < list.size(); ++i) rules.rules.push_back(read_rule(list[i], path, i));
  r.finish();
  return rules;
}

// libstdc++ runs std::regex by recursion, a few hundred bytes of stack per character a pattern
// like '.*' consumes (an 8 MiB stack overflows near 25,000 characters): regexes see at most the
// first kMaxMatchedChars of a name or context. Real kernel names stay well below (~1,500).
constexpr size_t kMaxMatchedChars = 4096;

bool found(const std::regex& re, const std::string& text) {
  const auto end = text.begin() + static_cast<std::ptrdiff_t>(std::min(text.size(), kMaxMatchedChars));
  return std::regex_search(text.begin(), end, re);
}

bool search(const std::optional<std::regex>& re, const std::string& text) { return !re || found(*re, text); }

bool ignored(const KernelRules& r, const std::string& name) {
  return std::any_of(r.ignore_annotations.begin(), r.ignore_annotations.end(),
                     [&](const std::regex& re) { return found(re, name); });
}

void sort_by_launch_time(std::vector<size_t>& ks, const std::vector<const TraceLaunch*>& launch_of) {
  std::stable_sort(ks.begin(), ks.end(), [&](size_t x, size_t y) { return launch_of[x]->ts_us < launch_of[y]->ts_us; });
}

// Innermost non-ignored annotation enclosing each launch time, by a sweep over time per process:
// annotations enter the active set when they start and leave it (lazily) once they have ended.
// Returns, per kernel, the annotation's index in `ann` or -1.
std::vector<int> enclosing_annotation(const std::vector<const TraceRange*>& ann,
                                      const std::vector<const TraceLaunch*>& launch_of) {
  std::vector<int> out(launch_of.size(), -1);
  std::map<int64_t, std::vector<size_t>> queries;  // pid -> kernels, by launch time
  for (size_t k = 0; k < launch_of.size(); ++k)
    if (launch_of[k]) queries[launch_of[k]->pid].push_back(k);
  for (auto& [pid, ks] : queries) {
    sort_by_launch_time(ks, launch_of);
    using Key = std::tuple<double, double, size_t>;  // (dur, -start, index): shortest first, then latest
    std::set<Key> active;
    std::priority_queue<std::pair<double, Key>, std::vector<std::pair<double, Key>>, std::greater<>> by_end;
    size_t next = 0;
    for (size_t k : ks) {
      const double t = launch_of[k]->ts_us;
      for (; next < ann.size() && ann[next]->start_us <= t; ++next) {
        if (ann[next]->pid != pid) continue;
        const Key key{ann[next]->dur_us, -ann[next]->start_us, next};
        active.insert(key);
        by_end.push({ann[next]->start_us + ann[next]->dur_us, key});
      }
      while (!by_end.empty() && by_end.top().first < t) {
        active.erase(by_end.top().second);
        by_end.pop();
      }
      if (!active.empty()) out[k] = static_cast<int>(std::get<2>(*active.begin()));
    }
  }
  return out;
}

// The ranges of the launching thread that enclose each launch, outermost first, by a sweep per
// thread with a stack (profiler ranges of one thread nest; ended ranges are filtered all the same).
std::vector<std::string> launch_contexts(const ChromeTrace& t, const KernelRules& r,
                                         const std::vector<const TraceLaunch*>& launch_of) {
  std::vector<std::string> out(launch_of.size());
  using Thread = std::pair<int64_t, int64_t>;
  std::map<Thread, std::vector<const TraceRange*>> ranges;
  for (const TraceRange& range : t.ranges) {
    if (range.category == "user_annotation" && ignored(r, range.name)) continue;
    ranges[{range.pid, range.tid}].push_back(&range);  // already by start, outer first
  }
  std::map<Thread, std::vector<size_t>> queries;
  for (size_t k = 0; k < launch_of.size(); ++k)
    if (launch_of[k]) queries[{launch_of[k]->pid, launch_of[k]->tid}].push_back(k);

  const auto end_of = [](const TraceRange* x) { return x->start_us + x->dur_us; };
  for (auto& [thread, ks] : queries) {
    const std::vector<const TraceRange*>& rs = ranges[thread];
    sort_by_launch_time(ks, launch_of);
    std::vector<const TraceRange*> stack;
    size_t next = 0;
    for (size_t k : ks) {
      const double ts = launch_of[k]->ts_us;
      for (; next < rs.size() && rs[next]->start_us <= ts; ++next) {
        while (!stack.empty() && end_of(stack.back()) < rs[next]->start_us) stack.pop_back();
        stack.push_back(rs[next]);
      }
      while (!stack.empty() && end_of(stack.back()) < ts) stack.pop_back();
      std::string ctx;
      for (const TraceRange* range : stack) {
        if (end_of(range) < ts) continue;
        if (!ctx.empty()) ctx += " > ";
        ctx += range->name;
      }
      out[k] = std::move(ctx);
    }
  }
  return out;
}

// Equal sharing of each device's wall time among the compute kernels running at each instant:
// S(t) = integral of 1/n(t) dt over the time some compute kernel runs; a kernel gets S(end) - S(start).
void split_compute_time(std::vector<ClassifiedKernel>& ks, const KernelRules& r) {
  struct Edge {
    double t;
    bool start;
    size_t k;
  };
  std::map<int, std::vector<Edge>> per_device;
  for (size_t i = 0; i < ks.size(); ++i) {
    ClassifiedKernel& c = ks[i];
    if (r.is_comm(c.op)) {
      c.effective_us = c.kernel.dur_us;
      continue;
    }
    c.effective_us = 0;
    if (c.kernel.dur_us <= 0) continue;
    per_device[c.kernel.device].push_back({c.kernel.start_us, true, i});
    per_device[c.kernel.device].push_back({c.kernel.start_us + c.kernel.dur_us, false, i});
  }
  std::vector<double> share_at_start(ks.size(), 0);
  for (auto& [device, edges] : per_device) {
    std::sort(edges.begin(), edges.end(), [](const Edge& x, const Edge& y) { return x.t < y.t; });
    double share = 0, prev = edges.front().t;
    int running = 0;
    for (const Edge& e : edges) {
      if (running > 0) share += (e.t - prev) / running;
      prev = e.t;
      if (e.start) {
        share_at_start[e.k] = share;
        ++running;
      } else {
        ks[e.k].effective_us = share - share_at_start[e.k];
        --running;
      }
    }
  }
}

}  // namespace

Result<KernelRules> load_kernel_rules(const std::string& path) {
  Result<std::string> text = read_regular_file(path, kMaxRulesBytes);
  if (!text) return text.error();
  return catch_input_errors([&] { return parse_rules(path, text.value()); });
}

KernelRules default_kernel_rules() {
  const char* kDefault = "sim/calibration/kernel-rules.yaml";
  // The built-in copy is the source tree's at build time; a test parses it, so this cannot fail.
  return parse_rules(built_in_name(kDefault), std::string(built_in_file(kDefault).value()));
}

const KernelRule* match_rule(const KernelRules& r, const TraceKernel& k, const std::string& phase,
                             const std::string& context) {
  const int64_t grid = k.grid_size();
  for (const KernelRule& rule : r.rules) {
    if (!rule.category.empty() && rule.category != k.category) continue;
    if (grid < rule.min_grid || grid > rule.max_grid) continue;
    if (!search(rule.name, k.name) || !search(rule.phase, phase) || !search(rule.context, context)) continue;
    if (rule.not_context && found(*rule.not_context, context)) continue;
    return &rule;
  }
  return nullptr;
}

Classification classify(const ChromeTrace& t, const KernelRules& r) {
  Classification out;
  const size_t n = t.kernels.size();

  std::unordered_map<int64_t, const TraceLaunch*> by_correlation;
  for (const TraceLaunch& l : t.launches) by_correlation.emplace(l.correlation, &l);
  std::vector<const TraceLaunch*> launch_of(n, nullptr);
  for (size_t k = 0; k < n; ++k) {
    const TraceKernel& kernel = t.kernels[k];
    if (!kernel.phase_hint.empty() || kernel.correlation < 0) continue;
    if (auto it = by_correlation.find(kernel.correlation); it != by_correlation.end()) launch_of[k] = it->second;
  }

  // Phases: the annotations that are not ignored, numbered per name in time order.
  std::vector<const TraceRange*> ann;
  std::vector<int> ann_index;
  std::map<std::string, int> seen;
  for (const TraceRange& range : t.ranges) {
    if (range.category != "user_annotation" || ignored(r, range.name)) continue;
    ann.push_back(&range);
    ann_index.push_back(seen[range.name]++);
  }
  const std::vector<int> phase_of = enclosing_annotation(ann, launch_of);
  std::vector<std::string> context_of = launch_contexts(t, r, launch_of);

  std::map<std::pair<int, std::string>, int> hint_seen;  // (device, kind) -> tasks so far
  std::unordered_map<std::string, const KernelRule*> cache;
  std::map<std::string, Classification::Unmatched> unmatched;
  out.kernels.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    ClassifiedKernel c;
    c.kernel = t.kernels[k];
    if (!c.kernel.phase_hint.empty()) {
      c.phase = c.kernel.phase_hint;
      c.phase_index = hint_seen[{c.kernel.device, c.phase}]++;
    } else if (phase_of[k] >= 0) {
      c.phase = ann[idx(phase_of[k])]->name;
      c.phase_index = ann_index[idx(phase_of[k])];
    }
    c.context = std::move(context_of[k]);

    // Kernels repeat (every layer, every step): match each distinct (event, phase, context) once.
    std::string key = c.kernel.category + '\x1f' + c.kernel.name + '\x1f' + c.phase + '\x1f' + c.context +
                      '\x1f' + std::to_string(c.kernel.grid_size());
    auto [it, fresh] = cache.emplace(std::move(key), nullptr);
    if (fresh) it->second = match_rule(r, c.kernel, c.phase, c.context);
    const KernelRule* rule = it->second;

    out.total_us += c.kernel.dur_us;
    if (rule) {
      c.op = rule->op;
      out.classified_us += c.kernel.dur_us;
      ++out.kernels_classified;
    } else {
      Classification::Unmatched& u = unmatched[c.kernel.name];
      u.name = c.kernel.name;
      ++u.count;
      u.us += c.kernel.dur_us;
    }
    out.kernels.push_back(std::move(c));
  }
  out.kernels_total = static_cast<int>(n);
  split_compute_time(out.kernels, r);

  for (auto& [name, u] : unmatched) out.unclassified.push_back(std::move(u));
  std::stable_sort(out.unclassified.begin(), out.unclassified.end(),
                   [](const Classification::Unmatched& x, const Classification::Unmatched& y) {
                     return x.us != y.us ? x.us > y.us : x.count > y.count;
                   });
  return out;
}

}  // namespace tandem
