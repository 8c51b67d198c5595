// Measured routing: the histogram loader's validation, and the patterns fitted to a histogram
// through the model's own gate (models/routing_histogram.h, models/routing_fanout.h).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>

#include "common/card_reader.h"
#include "models/routing_fanout.h"
#include "models/routing_histogram.h"
#include "models/workload.h"
#include "../temp_dir.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

// tiny-moe as tiny-sim-128 widens it: 64 routed experts in 8 groups, top-8, node limit 4; MoE
// layers 1..7 and the MTP module's layer 8.
ModelCard tiny64() {
  ModelCard m = load_model_card(repo("models/tiny-moe.yaml")).value();
  m.n_routed_experts = 64;
  m.n_group = 8;
  m.topk_group = 4;
  m.num_experts_per_tok = 8;
  return m;
}

// EP32 over 4 nodes of 8 GPUs: two experts per GPU.
ExpertLayout layout_with(std::shared_ptr<const RoutingHistogram> h) {
  ExpertLayout l;
  l.ep = 32;
  l.gpus_per_node = 8;
  l.node_limit = 4;
  l.routing_seed = 1;
  l.routing_histogram = std::move(h);
  return l;
}

// A histogram text with `count(layer, expert)` tokens for every MoE layer 1..8 and expert.
template <class F>
std::string histogram_text(F count) {
  std::string t = "layer,expert,tokens\n";
  for (int l = 1; l <= 8; ++l)
    for (int e = 0; e < 64; ++e) t += std::to_string(l) + "," + std::to_string(e) + "," + std::to_string(count(l, e)) + "\n";
  return t;
}

std::shared_ptr<const RoutingHistogram> parsed(const std::string& text) {
  Result<RoutingHistogram> h = parse_routing_histogram(text, "hist.csv", tiny64());
  if (!h) FAIL(h.error().message());
  return std::make_shared<const RoutingHistogram>(h.value());
}

InputError parse_error(const std::string& text) {
  Result<RoutingHistogram> h = parse_routing_histogram(text, "hist.csv", tiny64());
  REQUIRE_FALSE(h.ok());
  CHECK(h.error().file == "hist.csv");
  return h.error();
}

bool says(const InputError& e, const std::string& what) { return e.reason.find(what) != std::string::npos; }

}  // namespace

TEST_CASE("a routing histogram is read strictly against the model", "[workload]") {
  const auto ok = parsed("# made by hand\n\n" + histogram_text([](int l, int e) { return l * 100 + e; }));
  REQUIRE(ok->tokens.size() == 8);
  CHECK((*ok->layer(3))[5] == 305);
  CHECK(ok->layer(0) == nullptr);  // layer 0 is dense

  const std::string good = histogram_text([](int, int) { return 10; });
  auto with_line = [&](const std::string& line) { return good + line + "\n"; };
  // The line a row problem is on: the header is line 1, layer 1's experts lines 2..65, ...
  const int last = 1 + 8 * 64;

  InputError e = parse_error("");
  CHECK(says(e, "empty"));
  e = parse_error("layer,expert,count\n1,0,5\n");
  CHECK(e.key == "line 1");
  CHECK(says(e, "expected the header 'layer,expert,tokens'"));
  e = parse_error(with_line("1,0,1.5"));
  CHECK(e.key == "line " + std::to_string(last + 1));
  CHECK(says(e, "tokens must be a whole number, got '1.5'"));
  e = parse_error(with_line("1,0,abc"));
  CHECK(says(e, "tokens must be a whole number"));
  e = parse_error(with_line("1,0,-3"));
  CHECK(says(e, "tokens must be >= 0, got '-3'"));
  e = parse_error(with_line("1,0,99999999999999999999"));
  CHECK(says(e, "above the limit"));
  e = parse_error(with_line("1,0"));
  CHECK(says(e, "expected 3 fields"));
  e = parse_error(with_line("1,64,7"));
  CHECK(e.key == "line " + std::to_string(last + 1));
  CHECK(says(e, "expert 64 out of range"));
  CHECK(says(e, "64 routed experts (0..63)"));
  e = parse_error(with_line("0,1,7"));
  CHECK(says(e, "layer 0 is not a MoE layer"));
  CHECK(says(e, "its MoE layers: 1..8"));
  e = parse_error(with_line("9,1,7"));
  CHECK(says(e, "layer 9 is not a MoE layer"));
  e = parse_error(with_line("4,17,7"));
  CHECK(e.key == "line " + std::to_string(last + 1));
  CHECK(says(e, "layer 4, expert 17 given twice (first on line " + std::to_string(1 + 3 * 64 + 18) + ")"));

  // Whole layers: missing (the first one named), an expert without its row, nothing routed.
  std::string holes = "layer,expert,tokens\n";
  for (int l : {1, 2, 4, 6, 7, 8})
    for (int x = 0; x < 64; ++x) holes += std::to_string(l) + "," + std::to_string(x) + ",5\n";
  e = parse_error(holes);
  CHECK(e.key == "layer 3");
  CHECK(says(e, "no rows for MoE layer 3 (the first missing"));
  std::string gap = good;
  gap.erase(gap.find("\n2,40,10\n") + 1, std::string("2,40,10\n").size());
  e = parse_error(gap);
  CHECK(e.key == "layer 2");
  CHECK(says(e, "no row for expert 40"));
  e = parse_error(histogram_text([](int l, int) { return l == 5 ? 0 : 3; }));
  CHECK(e.key == "layer 5");
  CHECK(says(e, "every expert has 0 tokens"));

  // The file itself: missing, too large (the cards' cap), not a regular file.
  tandem::test::TempDir dir;
  Result<RoutingHistogram> r = load_routing_histogram(dir.file("none.csv"), tiny64());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().file == dir.file("none.csv"));
  CHECK(r.error().reason == "no such file");
  const std::string big = dir.write("big.csv", good + std::string(kMaxCardBytes, '#'));
  r = load_routing_histogram(big, tiny64());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().file == big);
  CHECK(says(r.error(), "-byte limit"));
  r = load_routing_histogram(dir.path.string(), tiny64());
  REQUIRE_FALSE(r.ok());
  CHECK(says(r.error(), "not a regular file"));
  r = load_routing_histogram(dir.write("ok.csv", "\xEF\xBB\xBF" + good), tiny64());
  CHECK(r.ok());
}

TEST_CASE("a measured routing pattern reproduces the histogram's expert frequencies", "[workload]") {
  const ModelCard m = tiny64();
  // Log-normal-like popularity, different in every layer, with a few cold experts and one that
  // got no tokens at all.
  const auto h = parsed(histogram_text([](int l, int e) {
    const double z = std::sin(12.9898 * (l * 64 + e)) * 43758.5453;
    const double u = z - std::floor(z);  // a fixed pseudo-random number in [0, 1)
    return e == 7 ? 0 : static_cast<int>(std::lround(10000 * std::exp(0.6 * (u - 0.5) * 2)));
  }));
  for (int64_t layer : {1, 5, 8}) {
    const RoutingPattern p = routing_pattern(m, layout_with(h), layer);
    const std::vector<int64_t>& counts = *h->layer(layer);
    double total = 0;
    for (int64_t c : counts) total += static_cast<double>(c);
    REQUIRE(p.expert_load.size() == 64);
    // Each expert's rows over the mean, sampled (8192 tokens x top-8: 1024 rows an expert on
    // average) against the histogram's: within 1% of the mean (0.3% measured), and exactly none
    // for expert 7.
    double worst = 0;
    for (size_t e = 0; e < 64; ++e)
      worst = std::max(worst, std::abs(p.expert_load[e] - static_cast<double>(counts[e]) * 64 / total));
    INFO("layer " << layer << ": worst expert off by " << worst << " of the mean");
    CHECK(worst < 0.01);
    CHECK(p.expert_load[7] == 0);
    // The member figures follow from the same sample: two experts a member.
    for (size_t d = 0; d < 32; ++d)
      CHECK(p.load[d] == Approx((p.expert_load[2 * d] + p.expert_load[2 * d + 1]) / 2).margin(1e-9));
  }
}

TEST_CASE("a uniform histogram gives the balanced pattern, a hot expert the busiest member", "[workload]") {
  const ModelCard m = tiny64();
  const RoutingPattern balanced = routing_pattern(m, layout_with(nullptr), 3);
  const RoutingPattern uniform = routing_pattern(m, layout_with(parsed(histogram_text([](int, int) { return 5000; }))), 3);
  // Sampling noise only: 8192 tokens put about 1024 rows on each expert, 2048 on each member.
  CHECK(uniform.max_load < 1.03);
  CHECK(uniform.max_expert_load < 1.05);
  for (size_t d = 0; d < 32; ++d) {
    CHECK(uniform.gpu_hit[d] == Approx(balanced.gpu_hit[d]).margin(0.03));
    CHECK(uniform.rows_per_token[d] == Approx(balanced.rows_per_token[d]).margin(0.01));
  }
  for (size_t n = 0; n < 4; ++n) CHECK(uniform.node_hit[n] == Approx(balanced.node_hit[n]).margin(0.02));

  // Expert 37 (member 18) gets three times its share: member 18 is the busiest, by about
  // (3 + 1) / 2 of its share.
  const RoutingPattern hot =
      routing_pattern(m, layout_with(parsed(histogram_text([](int, int e) { return e == 37 ? 3000 : 1000; }))), 3);
  const auto busiest = std::max_element(hot.load.begin(), hot.load.end()) - hot.load.begin();
  CHECK(busiest == 18);
  CHECK(hot.max_load == Approx(4.0 * 64 / 66 / 2).epsilon(0.01));
  CHECK(hot.expert_load[37] == Approx(3.0 * 64 / 66).epsilon(0.01));
}

TEST_CASE("measured patterns are deterministic and follow the histogram's content", "[workload]") {
  const ModelCard m = tiny64();
  auto hist = [](int hot) {
    return histogram_text([hot](int l, int e) { return e == hot ? 4000 : 1000 + 10 * ((l * 7 + e) % 13); });
  };
  // Two loads of the same content: the same cache key, and a pattern equal bit for bit (the
  // processes of a sweep compute it on their own: tests/sim checks it across processes and
  // through the disk cache).
  const RoutingPattern a = routing_pattern(m, layout_with(parsed(hist(10))), 2);
  const RoutingPattern b = routing_pattern(m, layout_with(parsed(hist(10))), 2);
  CHECK(a.load == b.load);
  CHECK(a.gpu_hit == b.gpu_hit);
  CHECK(a.node_hit == b.node_hit);
  CHECK(a.expert_load == b.expert_load);
  // Other content, another pattern (the cache is keyed by the counts, not by the file).
  const RoutingPattern c = routing_pattern(m, layout_with(parsed(hist(50))), 2);
  CHECK(c.load != a.load);
  CHECK(std::max_element(c.load.begin(), c.load.end()) - c.load.begin() == 25);
  CHECK(std::max_element(a.load.begin(), a.load.end()) - a.load.begin() == 5);
  // A layer the histogram lacks (a model it was not checked against) is an input error.
  ModelCard deeper = m;
  deeper.num_hidden_layers = 12;
  CHECK_THROWS_AS(routing_pattern(deeper, layout_with(parsed(hist(10))), 11), InputException);
}

TEST_CASE("the illustrative DeepSeek-V3 histogram is fitted through V3's gate", "[workload]") {
  const ModelCard m = load_model_card(repo("models/deepseek-v3.yaml")).value();
  Result<RoutingHistogram> h = load_routing_histogram(repo("scenarios/routing/deepseek-v3-illustrative.csv"), m);
  REQUIRE(h.ok());
  CHECK(h.value().tokens.size() == 59);  // layers 3..60 and the MTP module's 61
  ExpertLayout layout;
  layout.ep = 64;
  layout.gpus_per_node = 8;
  layout.node_limit = 4;
  layout.routing_histogram = std::make_shared<const RoutingHistogram>(h.value());
  for (int64_t layer : {3, 61}) {
    const RoutingPattern p = routing_pattern(m, layout, layer);
    const std::vector<int64_t>& counts = *layout.routing_histogram->layer(layer);
    double total = 0;
    for (int64_t c : counts) total += static_cast<double>(c);
    // 8192 tokens x top-8 over 256 experts: 256 rows an expert on average, so one row is 0.4%
    // of the mean; the fit lands within a few rows of every expert's target (1.2% measured).
    double worst = 0;
    for (size_t e = 0; e < 256; ++e)
      worst = std::max(worst, std::abs(p.expert_load[e] - static_cast<double>(counts[e]) * 256 / total));
    INFO("layer " << layer << ": worst expert off by " << worst << " of the mean");
    CHECK(worst < 0.025);
    const double hottest = static_cast<double>(*std::max_element(counts.begin(), counts.end())) * 256 / total;
    CHECK(p.max_expert_load == Approx(hottest).epsilon(0.02));
  }
}
