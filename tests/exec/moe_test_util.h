// Helpers of the MoE ops' tests (router, balance, moe_layer): the shared tensor-test helpers (tests/exec/tensor_test_util.h)
// and a simulated all-to-all (buffers moved between simulated EP members).
#pragma once

#include <cstdint>
#include <vector>

#include "exec/ops/moe_layer/dispatch_plan.h"
#include "exec/ops/router/router.h"
#include "exec/ops/tensor.h"
#include "tests/exec/tensor_test_util.h"

namespace tandem::moe::test {

using exec_test::bit_equal;
using exec_test::dot;
using exec_test::finite_diff;
using exec_test::random_mat;
using exec_test::rel_err;

// A validated router config: E experts in G groups, M groups and K experts a token.
inline RouterConfig router_config(int E, int G, int M, int K, double rsf = 2.5, bool norm = true) {
  RouterConfig c;
  c.n_routed = E;
  c.n_group = G;
  c.topk_group = M;
  c.top_k = K;
  c.routed_scaling_factor = rsf;
  c.norm_topk_prob = norm;
  c.validate();
  return c;
}

// The all-to-all-v: send[s][d] (member s's buffer for d) → recv[d][s].
inline std::vector<std::vector<Buffer>> all_to_all(std::vector<std::vector<Buffer>> send) {
  const size_t ep = send.size();
  std::vector<std::vector<Buffer>> recv(ep, std::vector<Buffer>(ep));
  for (size_t s = 0; s < ep; ++s)
    for (size_t d = 0; d < ep; ++d) recv[d][s] = std::move(send[s][d]);
  return recv;
}

}  // namespace tandem::moe::test
