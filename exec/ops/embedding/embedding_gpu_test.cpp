// The GPU half of the embedding and loss tests: the device twins (embedding_cuda.h, loss_cuda.h)
// against the CPU ops (embedding.h, loss.h):
//   embedding      forward / backward (repeated ids, > 8192 columns, bad ids) bit-identical;
//   cross_entropy  with ignored targets: loss within 1e-11 relative, d_logits within 5e-7 relative
//                  + 1e-15·scale per element, ignored rows exactly 0.
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
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/embedding/embedding.h"
#include "exec/ops/embedding/embedding_cuda.h"
#include "exec/ops/embedding/loss.h"
#include "exec/ops/embedding/loss_cuda.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;

using exec_test::random_mat;
using gputest::bits_of;
using gputest::expect;
using gputest::flat;
using gputest::same_bits;
using gputest::sync_device;
using gputest::to_device;
using gputest::to_host;

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
  expect(same_bits(to_host(d_y), flat(y)), tag + ": forward rows == exec/ops (bitwise)");

  // Backward into a non-zero gradient: the CPU adds onto what is there, so must the GPU.
  const nn::Mat<float> dy = random_mat<float>(n, hidden, seed + 1);
  nn::Mat<float> dtable = random_mat<float>(vocab, hidden, seed + 2, 0.01);
  auto d_dtable = to_device(flat(dtable));
  auto d_dy = to_device(flat(dy));
  nn::embedding_backward<float>(tokens, dy, dtable);
  cu::embedding_backward(d_tok.get(), n, d_dy.get(), vocab, hidden, d_dtable.get(), d_bad.get(), nullptr);
  expect(same_bits(to_host(d_dtable), flat(dtable)), tag + ": backward table gradient == exec/ops (bitwise)");
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
         tag + ": loss " + std::to_string(loss) + " vs exec/ops " + std::to_string(ref.loss) + " (1e-11 relative)");
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
  expect(grad_ok, tag + ": d_logits within 5e-7 relative (+1e-15 scale) of exec/ops");
  expect(ignored_ok, tag + ": ignored rows have zero d_logits and row loss");
  std::printf("%s: loss %.17g (exec/ops %.17g), d_logits: %zu of %zu not bit-equal, worst rel %.3g\n", tag.c_str(),
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

}  // namespace

TANDEM_GPU_CHECK(embedding) { check_embedding(); }

TANDEM_GPU_CHECK(cross_entropy) { check_cross_entropy(); }
