// The GPU half of the balance-loss test:
//
//   balance  balance_loss_forward / _backward (exec/ops/balance/balance_cuda.h) vs exec/ops/balance/balance.h <float>,
//            BIT FOR BIT (f, P, per-sequence losses, the loss, d_scores): random routings where one
//            expert is never chosen, tiny-moe's E = 16, K = 4 with 1 and 3 sequences of 64 tokens,
//            E = 256, K = 8 with 2 sequences of 300 (token chunks straddle the forward's block),
//            E = 72, K = 6 with 5 sequences of 37, and E = 1024, K = 8 (the largest block); and
//            0 tokens (loss 0).
//   balance  bitwise: the device performs the CPU's float operations in the CPU's order (balance.h).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/ops/balance/balance.h"
#include "exec/ops/balance/balance_cuda.h"
#include "exec/ops/router/router.h"
#include "tests/exec/tensor_test_util.h"
#include "tests/gpu/gpu_check.h"
#include "tests/gpu/numerics_util.h"

namespace {

using namespace tandem;
namespace cu = tandem::cuda;
namespace nn = tandem::nn;
using gputest::expect;
using gputest::flat;
using gputest::same_bits;
using gputest::to_device;
using gputest::to_host;

// ---------------------------------------------------------------- balance

// A routing of `tokens` tokens, K distinct experts each out of E, never `never` (-1: any).
moe::Routing random_routing(int tokens, int E, int K, int never, uint64_t seed) {
  std::mt19937_64 rng(seed);
  moe::Routing r;
  r.tokens = tokens;
  r.top_k = K;
  r.expert.reserve(idx(tokens) * K);
  std::vector<int32_t> pool;
  for (int e = 0; e < E; ++e)
    if (e != never) pool.push_back(e);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);  // the first K are the token's experts
    for (int j = 0; j < K; ++j) r.expert.push_back(pool[idx(j)]);
  }
  return r;
}

// Sigmoid-like scores in (0, 1).
nn::Mat<float> random_scores(int tokens, int E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(0.01, 0.99);
  nn::Mat<float> s(tokens, E);
  for (int64_t i = 0; i < s.size(); ++i) s.data()[i] = static_cast<float>(u(rng));
  return s;
}

void check_balance_case(const cu::Stream& st, int E, int K, int seq_len, int sequences, double alpha, float d_loss,
                        uint64_t seed) {
  const std::string tag = "balance E " + std::to_string(E) + " K " + std::to_string(K) + " seq " +
                          std::to_string(seq_len) + " x " + std::to_string(sequences);
  const int tokens = seq_len * sequences;
  const int never = E / 3;
  const moe::Routing routing = random_routing(tokens, E, K, never, seed);
  const nn::Mat<float> scores = random_scores(tokens, E, seed + 1);
  const moe::BalanceLoss<float> want = moe::balance_loss_forward<float>(routing, scores, seq_len, alpha);
  const nn::Mat<float> want_ds = moe::balance_loss_backward<float>(want, scores, seq_len, alpha, d_loss);

  auto d_scores = to_device(flat(scores));
  auto d_expert = to_device(routing.expert);
  cu::DeviceBuffer<float> f(idx(sequences) * E), P(idx(sequences) * E),
      per_seq(idx(sequences)), loss(1), ds(idx(tokens) * E);
  gputest::sync_device("balance: uploads");
  cu::balance_loss_forward(d_scores.get(), d_expert.get(), tokens, E, K, seq_len, alpha, f.get(), P.get(),
                           per_seq.get(), loss.get(), st.get());
  cu::balance_loss_backward(f.get(), d_scores.get(), tokens, E, seq_len, alpha, d_loss, ds.get(), st.get());
  st.sync("balance");

  const std::vector<float> got_f = to_host(f), got_P = to_host(P), got_ds = to_host(ds);
  expect(same_bits(got_f, flat(want.f)), tag + ": f differs from exec/ops");
  expect(same_bits(got_P, flat(want.P)), tag + ": P differs from exec/ops");
  expect(same_bits(to_host(per_seq), want.per_sequence), tag + ": per-sequence losses differ from exec/ops");
  expect(same_bits(to_host(loss), std::vector<float>{want.loss}), tag + ": loss differs from exec/ops");
  expect(same_bits(got_ds, flat(want_ds)), tag + ": d_scores differ from exec/ops");
  bool unused_zero = true;  // the never-chosen expert: f = 0 in every sequence
  for (int q = 0; q < sequences; ++q) unused_zero = unused_zero && got_f[idx(q) * E + never] == 0.0f;
  expect(unused_zero, tag + ": the never-chosen expert has f != 0");
  std::printf("%s: loss %.9g (cpu %.9g), d_scores rel-L2 %.2e\n", tag.c_str(), static_cast<double>(to_host(loss)[0]),
              static_cast<double>(want.loss), gputest::rel_l2(got_ds, flat(want_ds)));
}

}  // namespace

TANDEM_GPU_CHECK(balance) {
  cu::Stream st;
  // tiny-moe: E 16, K 4; 1 and 3 sequences of 64.
  check_balance_case(st, 16, 4, 64, 1, 1e-4, 1.0f, 31);
  check_balance_case(st, 16, 4, 64, 3, 1e-4, 0.125f, 32);
  // DeepSeek-V3's E and K; 300-token sequences straddle the forward's 256-token chunks.
  check_balance_case(st, 256, 8, 300, 2, 1e-3, 0.37f, 33);
  // E not a multiple of 32, short odd sequences.
  check_balance_case(st, 72, 6, 37, 5, 0.01, 1.0f / 3.0f, 34);
  // The largest block (1024 threads).
  check_balance_case(st, 1024, 8, 40, 2, 1e-4, 1.0f, 35);
  // 0 tokens: loss 0, nothing else written.
  cu::DeviceBuffer<float> loss(1);
  const std::vector<float> nan = {std::nanf("")};
  loss.upload(nan.data(), 1);
  gputest::sync_device("balance empty: upload");
  cu::balance_loss_forward(nullptr, nullptr, 0, 16, 4, 64, 1e-4, nullptr, nullptr, nullptr, loss.get(), st.get());
  cu::balance_loss_backward(nullptr, nullptr, 0, 16, 64, 1e-4, 1.0f, nullptr, st.get());
  st.sync("balance empty");
  expect(to_host(loss)[0] == 0.0f, "balance empty: the loss of 0 tokens is not 0");
}
