// GPU checks of the small device ops (exec/cuda/nn_ops.h) and the device router
// (exec/cuda/router.h) against the CPU reference (exec/nn, exec/fp8, exec/moe):
//   nn_ops  embedding forward / backward (repeated ids, > 8192 columns, bad ids) bit-identical;
//           cross-entropy with ignored targets: loss within 1e-11 relative, d_logits within
//           5e-7 relative + 1e-15·scale per element, ignored rows exactly 0; AdamW over several steps
//           (FP32 and BF16 moments, t up to 1000) bit-identical; add / add_inplace / scale
//           bit-identical (NaN results compared as NaN: payloads are the hardware's on both
//           sides); round_to_bf16 bit-identical on edge values (ties, overflow, subnormals, NaN
//           payloads) and 2^20 random bit patterns.
//   router  DeepSeek-V3 (E 256, G 8, 4 groups, top-8), tiny-moe (models/tiny-moe.yaml) and
//           corner configs; continuous, tie-heavy (a few score levels, grid bias) and skewed-bias
//           scores. Selection (ids, slot order) and gates bit-identical to exec/moe's
//           select_experts / gate_weights given the same scores; the sigmoid within 16 FP32 ulps
//           (2e-6 relative) of exec/moe's; backward d_logits bit-identical to
//           router_backward_logits (with and without the balance loss's d_scores); counts equal
//           to add_expert_counts; the Blas forward: selection consistent with its own scores.
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/cuda/blas.h"
#include "exec/cuda/cuda_check.h"
#include "exec/cuda/nn_ops.h"
#include "exec/cuda/router.h"
#include "exec/fp8/bf16.h"
#include "exec/moe/balance.h"
#include "exec/moe/router.h"
#include "exec/nn/adamw.h"
#include "exec/nn/embedding.h"
#include "exec/nn/loss.h"
#include "models/model_card.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/exec/moe/moe_test_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/test_paths.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;

using exec_test::random_mat;
using moe::test::router_config;
using gputest::expect;
using gputest::flat;
using gputest::same_bits;
using gputest::sync_device;
using gputest::to_device;
using gputest::to_host;

nn::Mat<float> mat_of(const std::vector<float>& v, int rows, int cols) {
  nn::Mat<float> m(rows, cols);
  if (!v.empty()) std::memcpy(m.data(), v.data(), v.size() * sizeof(float));
  return m;
}

float from_bits(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t bits_of(float f) { return std::bit_cast<uint32_t>(f); }

// ================================================================ nn_ops

// ---------------------------------------------------------------- embedding
void check_embedding_case(int vocab, int hidden, const std::vector<int32_t>& tokens, uint64_t seed,
                          const std::string& tag) {
  const int n = static_cast<int>(tokens.size());
  const nn::Mat<float> table = random_mat<float>(vocab, hidden, seed);
  auto d_table = to_device(flat(table));
  auto d_tok = to_device(tokens);
  auto d_bad = to_device(std::vector<int>{0});

  const nn::Mat<float> y = nn::embedding_forward<float>(table, tokens);
  cu::DeviceBuffer<float> d_y(idx(n) * hidden);
  cu::embedding_forward(d_table.get(), vocab, hidden, d_tok.get(), n, d_y.get(), d_bad.get(), nullptr);
  expect(same_bits(to_host(d_y), flat(y)), tag + ": forward rows == exec/nn (bitwise)");

  // Backward into a non-zero gradient: the CPU adds onto what is there, so must the GPU.
  const nn::Mat<float> dy = random_mat<float>(n, hidden, seed + 1);
  nn::Mat<float> dtable = random_mat<float>(vocab, hidden, seed + 2, 0.01);
  auto d_dtable = to_device(flat(dtable));
  auto d_dy = to_device(flat(dy));
  nn::embedding_backward<float>(tokens, dy, dtable);
  cu::embedding_backward(d_tok.get(), n, d_dy.get(), vocab, hidden, d_dtable.get(), d_bad.get(), nullptr);
  expect(same_bits(to_host(d_dtable), flat(dtable)), tag + ": backward table gradient == exec/nn (bitwise)");
  expect(to_host(d_bad)[0] == 0, tag + ": no bad token reported");
  sync_device(tag.c_str());
}

std::vector<int32_t> skewed_tokens(int n, int vocab, int hot, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int> any(0, vocab - 1), h(0, std::max(0, std::min(hot, vocab) - 1));
  std::vector<int32_t> t(idx(n));
  for (int i = 0; i < n; ++i) t[idx(i)] = (i % 2 == 0) ? h(rng) : any(rng);
  return t;
}

void check_embedding_bad_ids() {
  const int vocab = 50, hidden = 37;
  const std::vector<int32_t> tokens = {3, -1, 7, 50, 3, 1 << 30, 7, 0};
  std::vector<int32_t> valid;
  std::vector<int> valid_at;
  for (int i = 0; i < static_cast<int>(tokens.size()); ++i)
    if (tokens[idx(i)] >= 0 && tokens[idx(i)] < vocab) {
      valid.push_back(tokens[idx(i)]);
      valid_at.push_back(i);
    }
  const int n = static_cast<int>(tokens.size()), nv = static_cast<int>(valid.size());
  const nn::Mat<float> table = random_mat<float>(vocab, hidden, 91);
  auto d_table = to_device(flat(table));
  auto d_tok = to_device(tokens);
  auto d_bad = to_device(std::vector<int>{0});
  cu::DeviceBuffer<float> d_y(idx(n) * hidden);
  cu::embedding_forward(d_table.get(), vocab, hidden, d_tok.get(), n, d_y.get(), d_bad.get(), nullptr);
  const std::vector<float> y = to_host(d_y);
  const nn::Mat<float> ref = nn::embedding_forward<float>(table, valid);
  bool rows_ok = true, nan_ok = true;
  for (int i = 0, v = 0; i < n; ++i) {
    const bool good = v < nv && valid_at[idx(v)] == i;
    for (int j = 0; j < hidden; ++j) {
      const float g = y[idx(i) * hidden + j];
      if (good) rows_ok = rows_ok && bits_of(g) == bits_of(ref(v, j));
      else nan_ok = nan_ok && std::isnan(g);
    }
    if (good) ++v;
  }
  expect(rows_ok, "embedding bad ids: valid rows copied");
  expect(nan_ok, "embedding bad ids: rows of bad ids are NaN");
  expect(to_host(d_bad)[0] == 1, "embedding bad ids: forward sets the flag");

  // Backward: bad ids are skipped, the rest is the CPU's result on the valid tokens alone.
  const nn::Mat<float> dy = random_mat<float>(n, hidden, 92);
  nn::Mat<float> dy_valid(nv, hidden);
  for (int v = 0; v < nv; ++v) dy_valid.row(v) = dy.row(valid_at[idx(v)]);
  nn::Mat<float> dtable = nn::Mat<float>::Zero(vocab, hidden);
  auto d_dtable = to_device(flat(dtable));
  auto d_dy = to_device(flat(dy));
  auto d_bad2 = to_device(std::vector<int>{0});
  nn::embedding_backward<float>(valid, dy_valid, dtable);
  cu::embedding_backward(d_tok.get(), n, d_dy.get(), vocab, hidden, d_dtable.get(), d_bad2.get(), nullptr);
  expect(same_bits(to_host(d_dtable), flat(dtable)), "embedding bad ids: backward skips them (bitwise)");
  expect(to_host(d_bad2)[0] == 1, "embedding bad ids: backward sets the flag");
  sync_device("embedding bad ids");
}

void check_embedding() {
  check_embedding_case(1000, 300, skewed_tokens(777, 1000, 40, 1), 11, "embedding 1000x300, 777 tokens");
  check_embedding_case(97, 8200, skewed_tokens(300, 97, 5, 2), 12, "embedding 97x8200 (two column passes)");
  check_embedding_case(5, 1, skewed_tokens(1000, 5, 2, 3), 13, "embedding 5x1, 1000 tokens");
  check_embedding_case(10, 129, std::vector<int32_t>(2000, 3), 14, "embedding one id 2000 times");
  check_embedding_case(512, 7168, skewed_tokens(2048, 512, 16, 4), 15, "embedding 512x7168, 2048 tokens");
  check_embedding_case(130000, 64, skewed_tokens(16384, 130000, 300, 5), 16, "embedding 130000x64, 16384 tokens");
  check_embedding_case(8, 16, {}, 17, "embedding no tokens");
  check_embedding_bad_ids();
}

// ---------------------------------------------------------------- cross-entropy
void check_ce_case(int rows, int vocab, double scale, int ignore_every, bool spike, uint64_t seed,
                   const std::string& tag) {
  nn::Mat<float> logits = random_mat<float>(rows, vocab, seed, 3.0);
  if (spike && rows > 0 && vocab > 5) {
    logits(0, 5) = 40.0f;      // p ≈ 1 for the target below
    logits(rows - 1, 0) = -200.0f;  // p underflows to an FP32 subnormal / 0
  }
  std::mt19937_64 rng(seed + 7);
  std::uniform_int_distribution<int> pick(0, std::max(0, vocab - 1));
  std::vector<int32_t> targets(idx(rows));
  for (int i = 0; i < rows; ++i) {
    targets[idx(i)] = pick(rng);
    if (ignore_every > 0 && i % ignore_every == ignore_every - 1) targets[idx(i)] = i % 2 ? -1 : -7;
  }
  if (spike && rows > 0 && vocab > 5) targets[0] = 5;

  const nn::CrossEntropy<float> ref = nn::cross_entropy<float>(logits, targets, scale);
  auto d_logits = to_device(flat(logits));
  auto d_t = to_device(targets);
  cu::DeviceBuffer<float> d_dl(idx(rows) * vocab);
  cu::DeviceBuffer<double> d_rows(idx(rows));
  cu::DeviceBuffer<double> d_loss(1);
  cu::cross_entropy(d_logits.get(), rows, vocab, d_t.get(), scale, d_dl.get(), d_rows.get(), d_loss.get(), nullptr);
  const std::vector<float> dl = to_host(d_dl);
  const std::vector<double> rl = to_host(d_rows);
  const double loss = to_host(d_loss)[0];

  const double tol = 1e-11 * std::abs(ref.loss);
  expect(ref.loss == 0 ? loss == 0 : std::abs(loss - ref.loss) <= tol,
         tag + ": loss " + std::to_string(loss) + " vs exec/nn " + std::to_string(ref.loss) + " (1e-11 relative)");
  bool grad_ok = true, ignored_ok = true;
  std::size_t differ = 0;
  double worst = 0;
  for (int i = 0; i < rows; ++i) {
    const bool ignored = targets[idx(i)] < 0;
    if (ignored) ignored_ok = ignored_ok && rl[idx(i)] == 0.0;
    for (int j = 0; j < vocab; ++j) {
      const std::size_t k = idx(i) * vocab + j;
      const float want = ref.dlogits.data()[k], got = dl[k];
      if (ignored) {
        ignored_ok = ignored_ok && bits_of(got) == 0u;
        continue;
      }
      const double d = std::abs(static_cast<double>(got) - want);
      if (bits_of(got) != bits_of(want)) ++differ;
      if (want != 0) worst = std::max(worst, d / std::abs(want));
      // p is computed in double on both sides, each within a few ulps of 1 (≈ 2.2e-16) of the
      // exact value; where p ≈ 1 the target's p − 1 cancels, so that absolute error remains.
      grad_ok = grad_ok && d <= 5e-7 * std::abs(want) + 1e-15 * std::abs(scale);
    }
  }
  expect(grad_ok, tag + ": d_logits within 5e-7 relative (+1e-15 scale) of exec/nn");
  expect(ignored_ok, tag + ": ignored rows have zero d_logits and row loss");
  std::printf("%s: loss %.17g (exec/nn %.17g), d_logits: %zu of %zu not bit-equal, worst rel %.3g\n", tag.c_str(),
              loss, ref.loss, differ, dl.size(), worst);
  sync_device(tag.c_str());
}

void check_ce_bad_target() {
  const int rows = 4, vocab = 10;
  const nn::Mat<float> logits = random_mat<float>(rows, vocab, 5);
  const std::vector<int32_t> targets = {1, -1, 10, 3};
  auto d_logits = to_device(flat(logits));
  auto d_t = to_device(targets);
  cu::DeviceBuffer<float> d_dl(rows * vocab);
  cu::DeviceBuffer<double> d_rows(rows), d_loss(1);
  cu::cross_entropy(d_logits.get(), rows, vocab, d_t.get(), 0.25, d_dl.get(), d_rows.get(), d_loss.get(), nullptr);
  const std::vector<float> dl = to_host(d_dl);
  bool nan_row = true;
  for (int j = 0; j < vocab; ++j) nan_row = nan_row && std::isnan(dl[2 * vocab + j]);
  expect(nan_row && std::isnan(to_host(d_rows)[2]), "cross_entropy: a target >= vocab gives a NaN row");
  expect(std::isnan(to_host(d_loss)[0]), "cross_entropy: ... and a NaN loss");
  sync_device("cross_entropy bad target");
}

void check_cross_entropy() {
  check_ce_case(37, 5000, 1.0 / 37, 5, false, 21, "cross_entropy 37x5000, 1 row in 5 ignored");
  check_ce_case(3, 131072, 1.0 / 4096, 3, true, 22, "cross_entropy 3x131072, spikes");
  check_ce_case(256, 1024, 1.0 / 256, 0, false, 23, "cross_entropy 256x1024");
  check_ce_case(300, 129, 0.3 / 300, 7, true, 24, "cross_entropy 300x129 (MTP-like scale)");
  check_ce_case(5, 7, 1.0, 1, false, 25, "cross_entropy all rows ignored");
  check_ce_case(0, 10, 1.0, 0, false, 26, "cross_entropy no rows");
  check_ce_bad_target();
}

// ---------------------------------------------------------------- AdamW
void check_adamw_case(const nn::AdamWConfig& cfg, const std::vector<int64_t>& steps, const std::string& tag) {
  const std::size_t n = 100003;
  std::mt19937_64 rng(31);
  std::normal_distribution<float> p0(0.0f, 0.02f), g0(0.0f, 1e-2f);
  std::vector<float> p(n), m(n, 0.0f), v(n, 0.0f), g(n);
  for (auto& x : p) x = p0(rng);
  auto dp = to_device(p), dm = to_device(m), dv = to_device(v);
  cu::DeviceBuffer<float> dg(n);
  for (int64_t step : steps) {
    for (std::size_t i = 0; i < n; ++i) {
      float x = g0(rng);
      if (i % 101 == 0) x = 0.0f;
      if (i % 997 == 0) x *= 1e5f;
      if (i % 1009 == 0) x = 1e-30f;
      if (i % 4099 == 0) x = -3e3f;
      g[i] = x;
    }
    dg.upload(g.data(), n);
    nn::adamw_step(p, g, m, v, step, cfg);
    cu::adamw_step(dp.get(), dg.get(), dm.get(), dv.get(), n, cu::adamw_scalars(cfg, step), nullptr);
    const std::string at = tag + " step " + std::to_string(step);
    expect(same_bits(to_host(dp), p), at + ": params == exec/nn (bitwise)");
    expect(same_bits(to_host(dm), m), at + ": m == exec/nn (bitwise)");
    expect(same_bits(to_host(dv), v), at + ": v == exec/nn (bitwise)");
  }
  sync_device(tag.c_str());
}

void check_adamw() {
  nn::AdamWConfig c;
  c.lr = 1e-3;
  check_adamw_case(c, {1, 2, 3, 4, 5}, "adamw fp32 moments");
  c.bf16_moments = true;
  check_adamw_case(c, {1, 2, 3, 1000, 1001}, "adamw bf16 moments");
  nn::AdamWConfig d;
  d.lr = 3e-4;
  d.weight_decay = 0.0;
  d.beta2 = 0.999;
  d.eps = 1e-6;
  check_adamw_case(d, {1, 2, 7}, "adamw no decay");
  bool threw = false;
  try {
    (void)cu::adamw_scalars(c, 0);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "adamw_scalars: step 0 is rejected");
}

// ---------------------------------------------------------------- elementwise and BF16
// Bitwise, except that two NaNs count as equal (a NaN's payload after an arithmetic op is the
// hardware's: x86 keeps the first operand's, the GPU writes its canonical NaN).
bool same_values(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (bits_of(a[i]) != bits_of(b[i]) && !(std::isnan(a[i]) && std::isnan(b[i]))) return false;
  return true;
}

std::vector<float> random_values(std::size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, 10.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = d(rng);
  const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, FLT_MAX, -FLT_MAX, 1e-40f, -1e-45f, FLT_MIN};
  for (std::size_t i = 0; i < n; i += 1013) x[i] = specials[(i / 1013) % 10];
  return x;
}

void check_elementwise() {
  const std::size_t n = 1000003;
  const std::vector<float> a = random_values(n, 41), b = random_values(n, 42);
  auto da = to_device(a), db = to_device(b);
  cu::DeviceBuffer<float> dout(n);

  std::vector<float> want(n);
  for (std::size_t i = 0; i < n; ++i) want[i] = a[i] + b[i];
  cu::add(da.get(), db.get(), n, dout.get(), nullptr);
  expect(same_values(to_host(dout), want), "add == a + b");
  cu::add_inplace(da.get(), db.get(), n, nullptr);
  expect(same_values(to_host(da), want), "add_inplace: acc == acc + x");

  for (float s : {0.37f, 1.0f / 3.0f, -2.0f}) {
    for (std::size_t i = 0; i < n; ++i) want[i] = b[i] * s;
    cu::scale(db.get(), n, s, dout.get(), nullptr);
    expect(same_values(to_host(dout), want), "scale by " + std::to_string(s));
  }
  auto dc = to_device(b);
  cu::scale(dc.get(), n, 0.37f, dc.get(), nullptr);
  for (std::size_t i = 0; i < n; ++i) want[i] = b[i] * 0.37f;
  expect(same_values(to_host(dc), want), "scale in place");
  cu::add(dc.get(), dc.get(), 0, dc.get(), nullptr);  // empty: a no-op
  sync_device("elementwise");
}

void check_bf16() {
  const uint32_t edges[] = {
      0x00000000u, 0x80000000u, 0x3F800000u, 0xBF800000u,
      0x3F808000u,  // tie, kept part even: down
      0x3F818000u,  // tie, kept part odd: up
      0x3F808001u, 0x3F807FFFu, 0xBF818000u,
      0x7F7FFFFFu,  // FLT_MAX: rounds up to Inf
      0x7F7F7FFFu, 0x7F7F8000u, 0xFF7F8000u, 0x7F7E8000u,
      0x00000001u, 0x00008000u, 0x00018000u, 0x007FFFFFu, 0x807FFFFFu, 0x00800000u, 0x0000FFFFu,
      0x7F800000u, 0xFF800000u,
      0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0x7FBFFFFFu, 0xFF800001u, 0x7F810000u, 0x7FFFFFFFu, 0xFFFFFFFFu,
      0x7F80FFFFu, 0x7FC0FFFFu,
  };
  std::vector<float> x;
  for (uint32_t u : edges) x.push_back(from_bits(u));
  std::mt19937_64 rng(51);
  for (int i = 0; i < (1 << 20); ++i) x.push_back(from_bits(static_cast<uint32_t>(rng())));
  std::vector<float> want(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) want[i] = fp8::round_to_bf16(x[i]);
  auto dx = to_device(x);
  cu::DeviceBuffer<float> dout(x.size());
  cu::round_to_bf16(dx.get(), x.size(), dout.get(), nullptr);
  const std::vector<float> got = to_host(dout);
  expect(same_bits(got, want), "round_to_bf16 == exec/fp8 (bitwise, NaN payloads included)");
  for (std::size_t i = 0; i < sizeof(edges) / sizeof(edges[0]); ++i)
    if (bits_of(got[i]) != bits_of(want[i]))
      std::printf("  bf16 edge 0x%08X: got 0x%08X, exec/fp8 0x%08X\n", edges[i], bits_of(got[i]), bits_of(want[i]));
  cu::round_to_bf16(dx.get(), x.size(), dx.get(), nullptr);
  expect(same_bits(to_host(dx), want), "round_to_bf16 in place");
  sync_device("bf16");
}

// ================================================================ router

// The model cards hold these configs: cross-checked against the repository's cards.
void check_card(const moe::RouterConfig& c, const char* card) {
  const std::string path = tandem::test::repo(std::string("models/") + card);
  const Result<ModelCard> r = load_model_card(path);
  if (!r.ok()) {
    expect(false, "cannot read " + path);
    return;
  }
  const moe::RouterConfig f = moe::RouterConfig::from_card(r.value());
  expect(f.n_routed == c.n_routed && f.n_group == c.n_group && f.topk_group == c.topk_group && f.top_k == c.top_k &&
             f.routed_scaling_factor == c.routed_scaling_factor && f.norm_topk_prob == c.norm_topk_prob,
         std::string("router config == models/") + card);
}

// exec/moe's sigmoid (router.cpp): T(1) / (T(1) + std::exp(-z)) in float.
float cpu_sigmoid(float z) { return 1.0f / (1.0f + std::exp(-z)); }

enum class Scores { random, ties, skewed };

struct RouterInputs {
  nn::Mat<float> logits;  // empty for the tie-heavy scores (they are not a sigmoid's values)
  nn::Mat<float> scores;
  nn::Vec<float> bias;
};

RouterInputs router_inputs(const moe::RouterConfig& c, int tokens, Scores kind, uint64_t seed) {
  const int E = c.n_routed;
  RouterInputs in;
  in.bias = nn::Vec<float>::Zero(E);
  if (kind == Scores::ties) {
    // Scores on a grid of k/8 (k = 1..3) and a bias on the same grid: sums are exact, ties everywhere.
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> lvl(1, 3);
    in.scores.resize(tokens, E);
    for (int64_t i = 0; i < in.scores.size(); ++i) in.scores.data()[i] = static_cast<float>(lvl(rng)) / 8.0f;
    for (int e = 0; e < E; ++e) in.bias(e) = static_cast<float>((e * 7 % 3) - 1) / 8.0f;
    return in;
  }
  in.logits = random_mat<float>(tokens, E, seed, 1.5);
  in.scores = in.logits.unaryExpr(&cpu_sigmoid);
  if (kind == Scores::skewed) {
    // Group 0 strongly preferred, group 1 penalised, small noise elsewhere (a bias mid-training).
    const int per = c.experts_per_group();
    const nn::Mat<float> noise = random_mat<float>(E, 1, seed + 1, 0.02);
    for (int e = 0; e < E; ++e) in.bias(e) = e < per ? 0.3f : (e < 2 * per ? -0.2f : noise(e, 0));
  }
  return in;
}

void check_router_case(const moe::RouterConfig& c, int tokens, Scores kind, uint64_t seed, const std::string& tag) {
  const int E = c.n_routed, K = c.top_k;
  const cu::RouterConfig p = c;
  const RouterInputs in = router_inputs(c, tokens, kind, seed);
  const std::size_t nk = idx(tokens) * K;

  // Selection and gates from the CPU's scores.
  const moe::Routing r = moe::select_experts<float>(c, in.scores, in.bias);
  const nn::Mat<float> gate = moe::gate_weights<float>(c, in.scores, r);
  auto d_scores = to_device(flat(in.scores));
  auto d_bias = to_device(std::vector<float>(in.bias.data(), in.bias.data() + E));
  cu::DeviceBuffer<int32_t> d_expert(nk);
  cu::DeviceBuffer<float> d_gate(nk);
  cu::router_select(d_scores.get(), d_bias.get(), tokens, p, d_expert.get(), d_gate.get(), nullptr);
  const std::vector<int32_t> ids = to_host(d_expert);
  expect(ids == r.expert, tag + ": expert ids and slot order == exec/moe select_experts");
  expect(same_bits(to_host(d_gate), flat(gate)), tag + ": gates == exec/moe gate_weights (bitwise)");
  if (ids != r.expert) {
    for (int t = 0; t < tokens; ++t) {
      bool same = true;
      for (int j = 0; j < K; ++j) same = same && ids[idx(t) * K + j] == r.at(t, j);
      if (same) continue;
      std::printf("  first differing token %d:", t);
      for (int j = 0; j < K; ++j) std::printf(" %d/%d", ids[idx(t) * K + j], r.at(t, j));
      std::printf(" (gpu/cpu)\n");
      break;
    }
  }

  // Backward to the logits, with the balance loss's d_scores and without.
  const int seq_len = tokens % 128 == 0 ? 128 : tokens;
  const moe::BalanceLoss<float> bl = moe::balance_loss_forward<float>(r, in.scores, seq_len, 1e-3);
  const nn::Mat<float> d_bal = moe::balance_loss_backward<float>(bl, in.scores, seq_len, 1e-3, 1.0f);
  const nn::Mat<float> dg = random_mat<float>(tokens, K, seed + 5);
  moe::RouterState<float> st;
  st.scores = in.scores;
  st.routing = r;
  st.gate = gate;
  auto d_dg = to_device(flat(dg));
  cu::DeviceBuffer<float> d_dlog(idx(tokens) * E);
  for (bool with_bal : {true, false}) {
    const nn::Mat<float> want = moe::router_backward_logits<float>(c, st, dg, with_bal ? &d_bal : nullptr);
    auto d_bal_dev = to_device(flat(d_bal));
    cu::router_backward_logits(d_scores.get(), d_expert.get(), d_dg.get(), with_bal ? d_bal_dev.get() : nullptr,
                               tokens, p, d_dlog.get(), nullptr);
    expect(same_bits(to_host(d_dlog), flat(want)),
           tag + ": d_logits == exec/moe router_backward_logits (bitwise)" + (with_bal ? " with balance d_scores" : ""));
    if (with_bal) {  // d_logits written over d_scores
      cu::router_backward_logits(d_scores.get(), d_expert.get(), d_dg.get(), d_bal_dev.get(), tokens, p,
                                 d_bal_dev.get(), nullptr);
      expect(same_bits(to_host(d_bal_dev), flat(want)), tag + ": d_logits in place of d_scores");
    }
  }

  // Expert loads, accumulated onto non-zero (and large) counts.
  std::vector<int64_t> counts(idx(E));
  for (int e = 0; e < E; ++e) counts[idx(e)] = (int64_t{1} << 40) + e * 3;
  auto d_counts = to_device(counts);
  moe::add_expert_counts(r, counts);
  moe::add_expert_counts(r, counts);
  cu::add_expert_counts(d_expert.get(), nk, E, d_counts.get(), nullptr);
  cu::add_expert_counts(d_expert.get(), nk, E, d_counts.get(), nullptr);
  expect(to_host(d_counts) == counts, tag + ": counts == exec/moe add_expert_counts (twice)");

  // The forward from logits: the sigmoid within tolerance of exec/moe's; the selection and gates
  // are exec/moe's on the GPU's own scores (a 1-ulp sigmoid difference may move a near-tie).
  if (in.logits.size() > 0) {
    auto d_logits = to_device(flat(in.logits));
    cu::DeviceBuffer<float> d_s2(idx(tokens) * E);
    cu::router_forward(d_logits.get(), d_bias.get(), tokens, p, d_s2.get(), d_expert.get(), d_gate.get(), nullptr);
    const std::vector<float> s2 = to_host(d_s2);
    double worst = 0;
    std::size_t differ = 0;
    for (std::size_t i = 0; i < s2.size(); ++i) {
      const double want = in.scores.data()[i];
      worst = std::max(worst, std::abs(s2[i] - want) / want);
      differ += bits_of(s2[i]) != bits_of(in.scores.data()[i]);
    }
    expect(worst <= 2e-6, tag + ": sigmoid within 2e-6 relative of exec/moe's (worst " + std::to_string(worst) + ")");
    const nn::Mat<float> s2m = mat_of(s2, tokens, E);
    const moe::Routing r2 = moe::select_experts<float>(c, s2m, in.bias);
    expect(to_host(d_expert) == r2.expert, tag + ": router_forward ids == exec/moe on the GPU's scores");
    expect(same_bits(to_host(d_gate), flat(moe::gate_weights<float>(c, s2m, r2))),
           tag + ": router_forward gates == exec/moe on the GPU's scores (bitwise)");
    std::size_t moved = 0;
    for (std::size_t i = 0; i < r2.expert.size(); ++i) moved += r2.expert[i] != r.expert[i];
    std::printf("%s: sigmoid %zu of %zu not bit-equal (worst rel %.3g); %zu slots differ from the CPU's scores\n",
                tag.c_str(), differ, s2.size(), worst, moved);
  }
  sync_device(tag.c_str());
}

// The convenience forward through Blas (tiny-moe sizes): scores within a GEMM tolerance of
// exec/moe's router_forward, selection consistent with its own scores.
void check_router_blas(const moe::RouterConfig& c) {
  const int tokens = 512, hidden = 256, E = c.n_routed, K = c.top_k;
  const nn::Mat<float> x = random_mat<float>(tokens, hidden, 61);
  const nn::Mat<float> Wg = random_mat<float>(E, hidden, 62, 0.1);
  const nn::Mat<float> bias_m = random_mat<float>(E, 1, 63, 0.05);
  const nn::Vec<float> bias = bias_m.col(0);
  const moe::RouterState<float> st = moe::router_forward<float>(c, Wg, bias, x);
  auto dx = to_device(flat(x)), dw = to_device(flat(Wg));
  auto db = to_device(std::vector<float>(bias.data(), bias.data() + E));
  cu::DeviceBuffer<float> ds(idx(tokens) * E), dgate(idx(tokens) * K);
  cu::DeviceBuffer<int32_t> de(idx(tokens) * K);
  cu::Blas blas(nullptr);
  cu::router_forward(blas, dx.get(), dw.get(), tokens, hidden, db.get(), c, ds.get(), de.get(),
                     dgate.get());
  const std::vector<float> s = to_host(ds);
  double worst = 0;
  for (std::size_t i = 0; i < s.size(); ++i) worst = std::max(worst, std::abs(s[i] - double(st.scores.data()[i])));
  expect(worst <= 1e-5, "router Blas forward: scores within 1e-5 of exec/moe router_forward (worst " +
                            std::to_string(worst) + ")");
  const nn::Mat<float> sm = mat_of(s, tokens, E);
  const moe::Routing r = moe::select_experts<float>(c, sm, bias);
  expect(to_host(de) == r.expert, "router Blas forward: ids == exec/moe on the GPU's scores");
  std::size_t moved = 0;
  for (std::size_t i = 0; i < r.expert.size(); ++i) moved += r.expert[i] != st.routing.expert[i];
  std::printf("router Blas forward: worst |Δs| %.3g, %zu slots differ from exec/moe's full forward\n", worst, moved);
  sync_device("router Blas forward");
}

void check_router_validation() {
  auto throws = [](const cu::RouterConfig& p) {
    try {
      cu::check_device_router(p);
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  cu::RouterConfig p = router_config(256, 8, 4, 8, 2.5, true);
  expect(!throws(p), "RouterConfig: DeepSeek-V3 is valid");
  cu::RouterConfig q = p;
  q.n_routed = 2048;
  q.n_group = 8;
  expect(throws(q), "RouterConfig: n_routed > 1024 rejected");
  q = p;
  q.n_group = 7;
  expect(throws(q), "RouterConfig: n_group not dividing n_routed rejected");
  q = p;
  q.top_k = 129;
  expect(throws(q), "RouterConfig: top_k > topk_group * E/G rejected");
  bool threw = false;
  try {
    cu::router_select(nullptr, nullptr, -1, p, nullptr, nullptr, nullptr);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "router_select: negative tokens rejected");
  cu::router_select(nullptr, nullptr, 0, p, nullptr, nullptr, nullptr);  // empty: a no-op
}

void check_router() {
  const moe::RouterConfig dsv3 = router_config(256, 8, 4, 8, 2.5, true);
  const moe::RouterConfig tiny = router_config(16, 4, 2, 4, 2.5, true);
  check_card(dsv3, "deepseek-v3.yaml");
  check_card(tiny, "tiny-moe.yaml");
  struct Case {
    moe::RouterConfig c;
    int tokens;
    const char* name;
  };
  const Case cases[] = {
      {dsv3, 4096, "deepseek-v3 E256 G8 M4 K8"},
      {tiny, 1024, "tiny-moe E16 G4 M2 K4"},
      {router_config(72, 6, 3, 6, 1.0, false), 640, "E72 G6 M3 K6 unnormalised"},
      {router_config(8, 8, 3, 3, 2.5, true), 512, "E8 G8 M3 K3 (one expert a group)"},
      {router_config(12, 3, 3, 5, 1.5, true), 512, "E12 G3 M3 K5 (no group limit)"},
      {router_config(24, 6, 2, 8, 2.5, true), 512, "E24 G6 M2 K8 (all of the kept groups)"},
      {router_config(1024, 16, 4, 8, 2.5, true), 256, "E1024 G16 M4 K8 (the device limit)"},
      {router_config(64, 1, 1, 6, 2.5, true), 384, "E64 G1 K6 (greedy)"},
  };
  uint64_t seed = 700;
  for (const Case& k : cases) {
    check_router_case(k.c, k.tokens, Scores::random, ++seed, std::string(k.name) + ", random");
    check_router_case(k.c, k.tokens, Scores::ties, ++seed, std::string(k.name) + ", tie-heavy");
    check_router_case(k.c, k.tokens, Scores::skewed, ++seed, std::string(k.name) + ", skewed bias");
  }
  check_router_blas(tiny);
  check_router_validation();
}

}  // namespace

TANDEM_GPU_CHECK(nn_ops) {
  check_embedding();
  check_cross_entropy();
  check_adamw();
  check_elementwise();
  check_bf16();
}

TANDEM_GPU_CHECK(router) { check_router(); }
