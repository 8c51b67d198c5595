#include "models/routing_fanout.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <cmath>
#include <map>
#include <atomic>
#include <mutex>
#include <thread>
#include <numeric>
#include <random>
#include <tuple>
#include <vector>

#include "common/format.h"
#include "common/input_error.h"
#include "common/sha256.h"
#include "common/signed_index.h"
#include "common/write_file.h"
#include "models/workload.h"

namespace tandem {

namespace {

// Platform-independent uniform in [0, 1): std::uniform_real_distribution is not.
double uniform01(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * 0x1.0p-53; }

// The model's gate on one token's affinities: per-group scores (sum of the two best for
// noaux_tc, the best one for group_limited_greedy), the best `limit` groups kept, then the top-k
// experts among them. Ties go to the lower index (a stable order).
class Gate {
 public:
  Gate(const ModelCard& m, int64_t limit)
      : E_(m.n_routed_experts), G_(std::max<int64_t>(1, m.n_group)), limit_(limit), k_(m.num_experts_per_tok),
        sum_top2_(m.topk_method == "noaux_tc"), group_score_(G_), groups_(G_), kept_(G_), experts_(E_) {}

  // The chosen experts, best first (valid until the next call).
  const std::vector<int64_t>& select(const std::vector<double>& score) {
    const int64_t per_group = E_ / G_;
    std::fill(kept_.begin(), kept_.end(), 1);
    if (G_ > 1 && limit_ < G_) {
      for (int64_t g = 0; g < G_; ++g) {
        double best = -1e300, second = -1e300;
        for (int64_t e = g * per_group; e < (g + 1) * per_group; ++e) {
          const double v = score[idx(e)];
          if (v > best) { second = best; best = v; } else if (v > second) second = v;
        }
        group_score_[idx(g)] = (sum_top2_ && per_group >= 2) ? best + second : best;
      }
      std::iota(groups_.begin(), groups_.end(), 0);
      std::stable_sort(groups_.begin(), groups_.end(), [&](int64_t a, int64_t b) {
        return group_score_[idx(a)] > group_score_[idx(b)];
      });
      std::fill(kept_.begin(), kept_.end(), 0);
      for (int64_t i = 0; i < limit_; ++i) kept_[idx(groups_[idx(i)])] = 1;
    }
    experts_.clear();
    for (int64_t e = 0; e < E_; ++e)
      if (kept_[idx(e / per_group)]) experts_.push_back(e);
    // The k best in a stable order (ties to the lower index), without sorting the rest.
    const auto k = static_cast<ptrdiff_t>(std::min<int64_t>(k_, static_cast<int64_t>(experts_.size())));
    std::partial_sort(experts_.begin(), experts_.begin() + k, experts_.end(), [&](int64_t a, int64_t b) {
      const double sa = score[idx(a)], sb = score[idx(b)];
      return sa > sb || (sa == sb && a < b);
    });
    experts_.resize(idx(k));
    return experts_;
  }

 private:
  int64_t E_, G_, limit_, k_;
  bool sum_top2_;
  std::vector<double> group_score_;
  std::vector<int64_t> groups_;
  std::vector<char> kept_;
  std::vector<int64_t> experts_;
};

// Standard normal from two platform-independent uniforms (Box-Muller).
double normal01(std::mt19937_64& rng) {
  const double u1 = 1.0 - uniform01(rng), u2 = uniform01(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, std::string, int64_t, int64_t, uint64_t,
                       int64_t>;

// Skewed and measured patterns on disk: sampling one costs about 2M gate evaluations per layer, and every
// process of a sweep or a plan search would pay it again. One file per (inputs, layer), under
// $TANDEM_CACHE_DIR (an empty value: no cache), else $XDG_CACHE_HOME/tandem, else
// ~/.cache/tandem; the file repeats its inputs (checked on reading) and holds the figures as
// hexadecimal floats, so a pattern read back is the pattern sampled, bit for bit. It is only a
// cache: a file that is missing, unreadable or for other inputs is sampled again; a directory
// that cannot be written is left alone; files are written whole, then renamed.
std::string cache_dir() {
  if (const char* d = std::getenv("TANDEM_CACHE_DIR")) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return std::string(x) + "/tandem";
  if (const char* h = std::getenv("HOME"); h && *h) return std::string(h) + "/.cache/tandem";
  return "";
}

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

std::string cache_file(const std::string& inputs) {
  const std::string dir = cache_dir();
  if (dir.empty()) return "";
  char name[64];
  std::snprintf(name, sizeof name, "/routing-%016llx.txt", static_cast<unsigned long long>(fnv1a(inputs)));
  return dir + name;
}

bool read_cached(const std::string& file, const std::string& inputs, size_t experts, RoutingPattern& p) {
  std::ifstream in(file);
  std::string line;
  if (!in || !std::getline(in, line) || line != inputs) return false;
  auto numbers = [&](std::vector<double>& v, size_t n) {
    v.assign(n, 0.0);
    for (double& x : v) {
      std::string t;
      if (!(in >> t)) return false;
      char* end = nullptr;
      x = std::strtod(t.c_str(), &end);
      if (!end || *end) return false;
    }
    return true;
  };
  std::vector<double> scalars;
  const auto ep = idx(p.ep), nodes = idx(p.nodes);
  if (!numbers(p.rows_per_token, ep) || !numbers(p.gpu_hit, ep) || !numbers(p.node_hit, nodes) || !numbers(p.load, ep) ||
      !numbers(p.expert_load, experts) || !numbers(scalars, 2))
    return false;
  p.max_load = scalars[0];
  p.max_expert_load = scalars[1];
  return true;
}

void write_cached(const std::string& file, const std::string& inputs, const RoutingPattern& p) {
  std::error_code ec;
  std::filesystem::create_directories(std::filesystem::path(file).parent_path(), ec);
  std::string text = inputs + "\n";
  auto add = [&](double x, const char* after) { text += strprintf("%a", x) + after; };
  for (const std::vector<double>* v : {&p.rows_per_token, &p.gpu_hit, &p.node_hit, &p.load, &p.expert_load}) {
    for (double x : *v) add(x, " ");
    text += "\n";
  }
  add(p.max_load, " ");
  add(p.max_expert_load, "\n");
  write_file(file, text);  // whole, then renamed: a concurrent reader never sees half a file
}

}  // namespace

RoutingFanout sample_routing_fanout(const ModelCard& m, const ExpertLayout& layout,
                                    int64_t samples) {
  RoutingFanout out;
  const int64_t E = m.n_routed_experts;
  if (E == 0) return out;
  if (samples <= 0) samples = std::clamp<int64_t>((int64_t{1} << 21) / E, 64, 8192);
  const int64_t G = m.n_group;
  const int64_t limit = layout.node_limit > 0 ? std::min(layout.node_limit, G) : m.topk_group;
  const int64_t k = m.num_experts_per_tok;
  const int64_t ep = std::max<int64_t>(1, layout.ep);
  const int64_t gpn = std::max<int64_t>(1, std::min(layout.gpus_per_node, ep));

  static std::mutex mu;
  static std::map<Key, RoutingFanout> cache;
  const Key key{E, G, limit, k, m.topk_method, ep, gpn, layout.routing_seed, samples};
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }

  const int64_t experts_per_gpu = std::max<int64_t>(1, E / ep);
  std::mt19937_64 rng(layout.routing_seed * 0x9E3779B97F4A7C15ULL + 0x5EEDULL);
  Gate gate(m, limit);
  std::vector<double> score(E);
  std::vector<char> gpu_hit(ep), node_hit((ep + gpn - 1) / gpn);
  double nodes_sum = 0, remote_sum = 0, gpus_sum = 0, nvl_sum = 0;

  for (int64_t t = 0; t < samples; ++t) {
    for (auto& s : score) s = uniform01(rng);
    const std::vector<int64_t>& experts = gate.select(score);

    const int64_t src_gpu = t % ep;
    const int64_t src_node = src_gpu / gpn;
    std::fill(gpu_hit.begin(), gpu_hit.end(), 0);
    std::fill(node_hit.begin(), node_hit.end(), 0);
    for (int64_t e : experts) {
      const int64_t gpu = std::min(e / experts_per_gpu, ep - 1);
      gpu_hit[gpu] = 1;
      node_hit[gpu / gpn] = 1;
    }
    for (size_t n = 0; n < node_hit.size(); ++n) {
      if (!node_hit[n]) continue;
      nodes_sum += 1;
      const bool remote = static_cast<int64_t>(n) != src_node;
      remote_sum += remote ? 1 : 0;
      // Arrival GPU on that node: the sender itself, or its same-local-index peer (IB plane).
      const int64_t arrival = remote ? static_cast<int64_t>(n) * gpn + src_gpu % gpn : src_gpu;
      for (int64_t g = static_cast<int64_t>(n) * gpn; g < std::min(ep, (static_cast<int64_t>(n) + 1) * gpn); ++g)
        if (gpu_hit[g] && g != arrival) nvl_sum += 1;
    }
    gpus_sum += static_cast<double>(std::count(gpu_hit.begin(), gpu_hit.end(), 1));
  }
  const double n = static_cast<double>(samples);
  out = RoutingFanout{nodes_sum / n, remote_sum / n, gpus_sum / n, nvl_sum / n, samples};
  std::lock_guard<std::mutex> lock(mu);
  cache.emplace(key, out);
  return out;
}

namespace {

// The tokens a skewed or measured layer is sampled from, and the gate they go through.
class Sampler {
 public:
  // Draws the token logits xi ~ N(0, 1) of `samples` tokens from `rng` (token by token, expert
  // by expert). Drawn once: a fit replays the same tokens every round without drawing again.
  Sampler(const ModelCard& m, int64_t limit, int64_t ep, int64_t gpn, int64_t samples, std::mt19937_64& rng)
      : m_(m), limit_(limit), ep_(ep), gpn_(gpn), nodes_((ep + gpn - 1) / gpn), samples_(samples),
        xi_(idx(samples * m.n_routed_experts)) {
    for (double& x : xi_) x = normal01(rng);
  }

  // Routes the tokens through the gate — affinity sigmoid(xi + offset[e]) — and fills p's
  // per-member, per-node and per-expert figures; returns each expert's rows. The one sampler of
  // skewed and measured routing: they differ only in where the offsets come from.
  std::vector<double> run(const std::vector<double>& offset, RoutingPattern& p) const {
    const int64_t E = m_.n_routed_experts;
    const int64_t experts_per_gpu = std::max<int64_t>(1, E / ep_);
    const auto n_ep = idx(ep_), n_nodes = idx(nodes_);
    Gate gate(m_, limit_);
    std::vector<double> score(idx(E)), expert_rows(idx(E), 0.0);
    std::vector<char> gpu_seen(n_ep), node_seen(n_nodes);
    p.rows_per_token.assign(n_ep, 0.0);
    p.gpu_hit.assign(n_ep, 0.0);
    p.node_hit.assign(n_nodes, 0.0);
    for (int64_t t = 0; t < samples_; ++t) {
      const double* x = xi_.data() + idx(t * E);
      for (size_t e = 0; e < score.size(); ++e) score[e] = 1.0 / (1.0 + std::exp(-(x[e] + offset[e])));
      std::fill(gpu_seen.begin(), gpu_seen.end(), 0);
      std::fill(node_seen.begin(), node_seen.end(), 0);
      for (int64_t e : gate.select(score)) {
        const auto gpu = idx(std::min(e / experts_per_gpu, ep_ - 1));
        expert_rows[idx(e)] += 1;
        p.rows_per_token[gpu] += 1;
        gpu_seen[gpu] = 1;
        node_seen[gpu / idx(gpn_)] = 1;
      }
      for (size_t g = 0; g < n_ep; ++g) p.gpu_hit[g] += gpu_seen[g];
      for (size_t n = 0; n < n_nodes; ++n) p.node_hit[n] += node_seen[n];
    }
    const double n = static_cast<double>(samples_);
    for (auto& v : p.rows_per_token) v /= n;
    for (auto& v : p.gpu_hit) v /= n;
    for (auto& v : p.node_hit) v /= n;
    double rows = 0;
    for (double r : p.rows_per_token) rows += r;
    p.load.assign(n_ep, 1.0);
    for (size_t d = 0; d < n_ep && rows > 0; ++d) p.load[d] = p.rows_per_token[d] * static_cast<double>(ep_) / rows;
    p.max_load = *std::max_element(p.load.begin(), p.load.end());
    const double mean_expert = n * static_cast<double>(m_.num_experts_per_tok) / static_cast<double>(E);
    p.expert_load.resize(expert_rows.size());
    for (size_t e = 0; e < expert_rows.size(); ++e) p.expert_load[e] = expert_rows[e] / mean_expert;
    p.max_expert_load = *std::max_element(p.expert_load.begin(), p.expert_load.end());
    return expert_rows;
  }

  // Measured routing: offsets fitted so that the tokens reproduce `counts` (see the header):
  // each round replays the same tokens (common random numbers: the fit does not chase sampling
  // noise, and it is deterministic). Damped steps: an expert's offset also moves its group's
  // score and, through the node limit, the rows of the group's other experts, so full steps
  // overshoot (on tiny-sim-128's gate they diverge even from a uniform histogram). Half steps
  // converge but end in a cycle as wide as a few % of the mean (7% on V3's gate: a token's
  // groups flip for small moves of the offsets), so after round kFitHalfSteps each step is
  // 0.8x the one before. Measured (tests/models/test_routing_histogram.cpp): every expert within
  // 0.3% of the mean on tiny-sim-128's gate, with an expert 3x its share too, and within 1.3% on
  // V3's for the illustrative histogram (one row of 8192 x 8 / 256 is 0.4%). The 1/2 row on both
  // sides of the ratio keeps an expert that got no tokens (target 0) or none yet (sampled 0)
  // finite: a target of 0 lowers its offset until the sample gives it none, then stops. p: the
  // sample at the last offsets.
  void fit(const std::vector<int64_t>& counts, RoutingPattern& p) const {
    double measured = 0;
    for (int64_t c : counts) measured += static_cast<double>(c);
    std::vector<double> offset(counts.size(), 0.0), target(counts.size());
    for (int round = 0;; ++round) {
      const std::vector<double> rows = run(offset, p);
      if (round == kFitRounds) break;
      if (round == 0) {  // every token makes the same number of rows whatever the offsets
        double total = 0;
        for (double r : rows) total += r;
        for (size_t e = 0; e < counts.size(); ++e) target[e] = static_cast<double>(counts[e]) / measured * total;
      }
      const double step = 0.5 * std::pow(0.8, std::max(0, round - kFitHalfSteps));
      for (size_t e = 0; e < counts.size(); ++e) offset[e] += step * std::log((target[e] + 0.5) / (rows[e] + 0.5));
    }
  }

 private:
  const ModelCard& m_;
  int64_t limit_, ep_, gpn_, nodes_, samples_;
  std::vector<double> xi_;  // samples x experts, token-major
};

// The layer's own stream of draws: skewed offsets, then tokens; measured routing, the tokens.
std::mt19937_64 layer_rng(uint64_t seed, int64_t layer) {
  return std::mt19937_64((seed + 1) * 0x9E3779B97F4A7C15ULL ^ (static_cast<uint64_t>(layer) + 1) * 0xBF58476D1CE4E5B9ULL);
}

}  // namespace

RoutingPattern routing_pattern(const ModelCard& m, const ExpertLayout& layout, int64_t layer) {
  RoutingPattern p;
  const int64_t E = m.n_routed_experts;
  p.ep = std::max<int64_t>(1, layout.ep);
  const int64_t gpn = std::max<int64_t>(1, std::min(layout.gpus_per_node, p.ep));
  p.nodes = (p.ep + gpn - 1) / gpn;
  const auto ep = idx(p.ep), nodes = idx(p.nodes);
  if (E == 0) return p;
  const double k = static_cast<double>(m.num_experts_per_tok);
  const RoutingHistogram* histogram = layout.routing_histogram.get();
  if (!histogram && layout.routing_skew <= 0) {
    // Balanced: every member and node alike, with the fan-out's own per-token figures, so the
    // flows built from this pattern carry exactly the AllToAll volumes.
    const RoutingFanout f = sample_routing_fanout(m, layout);
    p.rows_per_token.assign(ep, k / static_cast<double>(p.ep));
    p.gpu_hit.assign(ep, gpn > 1 ? f.nvlink_sends / (static_cast<double>(p.nodes) * static_cast<double>(gpn - 1))
                                 : f.dest_gpus / static_cast<double>(p.ep));
    p.node_hit.assign(nodes, p.nodes > 1 ? f.remote_nodes / static_cast<double>(p.nodes - 1) : 1.0);
    p.load.assign(ep, 1.0);
    p.expert_load.assign(idx(E), 1.0);
    return p;
  }
  const int64_t G = m.n_group;
  const int64_t limit = layout.node_limit > 0 ? std::min(layout.node_limit, G) : m.topk_group;
  const int64_t samples = std::clamp<int64_t>((int64_t{1} << 21) / E, 64, 8192);
  const std::vector<int64_t>* counts = nullptr;
  std::string offsets;  // where the offsets come from, for the cache's key
  if (histogram) {
    counts = histogram->layer(layer);
    if (!counts || static_cast<int64_t>(counts->size()) != E)
      throw_input_error(histogram->file, "layer " + std::to_string(layer),
                        counts ? "counts for " + std::to_string(counts->size()) + " experts, the model has " + std::to_string(E)
                               : "no counts for MoE layer " + std::to_string(layer));
    std::string text;
    for (int64_t c : *counts) text += std::to_string(c) + ",";
    offsets = "measured " + sha256_hex(text).substr(0, 16) + " fit " + std::to_string(kFitRounds) + " rounds, " +
              std::to_string(kFitHalfSteps) + " half steps, then x0.8";
  } else {
    offsets = strprintf("skew %a", layout.routing_skew);
  }
  char inputs_buf[512];
  std::snprintf(inputs_buf, sizeof inputs_buf,
                "tandem routing pattern v2: experts %lld groups %lld limit %lld top-k %lld method %s ep %lld gpn %lld "
                "seed %llu samples %lld %s layer %lld",
                static_cast<long long>(E), static_cast<long long>(G), static_cast<long long>(limit),
                static_cast<long long>(m.num_experts_per_tok), m.topk_method.c_str(), static_cast<long long>(p.ep),
                static_cast<long long>(gpn), static_cast<unsigned long long>(layout.routing_seed), static_cast<long long>(samples),
                offsets.c_str(), static_cast<long long>(layer));
  const std::string inputs = inputs_buf;

  static std::mutex mu;
  static std::map<std::string, RoutingPattern> cache;  // by the inputs line: it names every input
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(inputs);
    if (it != cache.end()) return it->second;
  }
  const std::string file = cache_file(inputs);
  if (!file.empty() && read_cached(file, inputs, idx(E), p)) {
    std::lock_guard<std::mutex> lock(mu);
    cache.emplace(inputs, p);
    return p;
  }

  std::mt19937_64 rng = layer_rng(layout.routing_seed, layer);
  if (counts) {
    Sampler(m, limit, p.ep, gpn, samples, rng).fit(*counts, p);
  } else {
    // The layer's popular experts: one offset per expert, drawn before its tokens.
    std::vector<double> offset(idx(E));
    for (auto& b : offset) b = layout.routing_skew * normal01(rng);
    Sampler(m, limit, p.ep, gpn, samples, rng).run(offset, p);
  }
  if (!file.empty()) write_cached(file, inputs, p);
  std::lock_guard<std::mutex> lock(mu);
  cache.emplace(inputs, p);
  return p;
}

void prefetch_routing_patterns(const ModelCard& m, const ExpertLayout& layout, const std::vector<int64_t>& layers) {
  if ((!layout.routing_histogram && layout.routing_skew <= 0) || layers.size() < 2) return;
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < layers.size(); i = next++) {
      // A layer that cannot be sampled is left to the caller's own routing_pattern, which
      // throws its error in layer order (a thread's exception would end the process).
      try {
        routing_pattern(m, layout, layers[i]);
      } catch (const InputException&) {
      }
    }
  };
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  std::vector<std::thread> threads;
  for (unsigned k = 0; k < std::min<size_t>(cores, layers.size()); ++k) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
}

}  // namespace tandem
