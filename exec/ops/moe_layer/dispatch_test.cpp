// Dispatch plan and the four transfers' buffers: order, 128-row padding, experts with no tokens,
// round trips through a simulated all-to-all, and the BF16 / FP8 wire formats.
#include <algorithm>
#include <catch2/catch.hpp>
#include <set>

#include "common/signed_index.h"
#include "exec/fp8/bf16.h"
#include "exec/fp8/quantize.h"
#include "exec/ops/moe_layer/dispatch_plan.h"
#include "tests/exec/moe_test_util.h"

using tandem::idx;

using namespace tandem::moe;
namespace fp8 = tandem::fp8;
using tandem::moe::test::all_to_all;
using tandem::moe::test::bit_equal;
using tandem::moe::test::random_mat;

namespace {

// Random routing of `tokens` tokens: K distinct experts each, never from `avoid`; when `force` >= 0
// every token's slot 0 is that expert (one segment with more than 128 rows).
Routing random_routing(int tokens, int K, int E, uint64_t seed, const std::set<int>& avoid, int force = -1) {
  std::mt19937_64 rng(seed);
  Routing r;
  r.tokens = tokens;
  r.top_k = K;
  std::vector<int> pool;
  for (int e = 0; e < E; ++e)
    if (!avoid.count(e) && e != force) pool.push_back(e);
  for (int t = 0; t < tokens; ++t) {
    std::shuffle(pool.begin(), pool.end(), rng);
    int j = 0;
    if (force >= 0) r.expert.push_back(force), ++j;
    for (int i = 0; j < K; ++i, ++j) r.expert.push_back(pool[idx(i)]);
  }
  return r;
}

struct Member {
  Routing routing;
  DispatchPlan plan;
};

}  // namespace

TEST_CASE("moe dispatch: the plan lists each (token, slot) once, by token then slot, to its owner",
          "[moe][dispatch]") {
  const EpLayout ep(16, 4);
  REQUIRE(ep.experts_per_rank() == 4);
  REQUIRE(ep.owner(7) == 1);
  REQUIRE(ep.first_expert(3) == 12);
  const Routing r = random_routing(37, 4, 16, 1, {});
  const DispatchPlan p = make_dispatch_plan(ep, r);
  std::set<int> slots;
  for (int d = 0; d < 4; ++d) {
    const auto& rows = p.to[idx(d)];
    for (size_t i = 0; i < rows.size(); ++i) {
      REQUIRE(ep.owner(rows[i].expert) == d);
      REQUIRE(r.at(rows[i].token, rows[i].slot) == rows[i].expert);
      if (i > 0) REQUIRE(std::pair(rows[i - 1].token, rows[i - 1].slot) < std::pair(rows[i].token, rows[i].slot));
      REQUIRE(slots.insert(rows[i].token * 4 + rows[i].slot).second);
    }
  }
  REQUIRE(slots.size() == 37u * 4u);
}

TEMPLATE_TEST_CASE("moe dispatch: segments in (source, token, slot) order, padded to 128, round trips",
                   "[moe][dispatch]", float, double) {
  using T = TestType;
  const int E = 16, K = 4, H = 24;
  for (int ep_size : {1, 2, 4}) {
    const EpLayout ep(E, ep_size);
    // members' micro-batches: one empty, one big enough that expert 5 gets > 128 rows; experts 2
    // and 9 get no tokens at all.
    const std::vector<int> tokens = {7, 140, 0, 3};
    std::vector<Member> m;
    std::vector<Mat<T>> x;
    for (int s = 0; s < ep_size; ++s) {
      const int n = tokens[idx(s)] + (ep_size == 1 ? 150 : 0);
      Member mb;
      mb.routing = random_routing(n, K, E, 100 + static_cast<uint64_t>(s), {2, 9}, n >= 140 ? 5 : -1);
      mb.plan = make_dispatch_plan(ep, mb.routing);
      m.push_back(mb);
      x.push_back(random_mat<T>(n, H, 200 + static_cast<uint64_t>(s)));
    }
    std::vector<std::vector<Buffer>> send;
    for (int s = 0; s < ep_size; ++s) send.push_back(pack_dispatch<T>(m[s].plan, x[s], Wire::exact));
    const auto recv = all_to_all(send);

    std::vector<ExpertRows<T>> er;
    for (int d = 0; d < ep_size; ++d) er.push_back(unpack_dispatch<T>(ep, d, recv[d]));

    // Expected placement: walk sources, tokens, slots in order.
    for (int d = 0; d < ep_size; ++d) {
      const SegmentLayout& L = er[d].layout;
      REQUIRE(L.n_local == E / ep_size);
      REQUIRE(L.cols == H);
      std::vector<int64_t> next(idx(L.n_local), 0);
      for (int s = 0; s < ep_size; ++s)
        for (int t = 0; t < m[s].routing.tokens; ++t)
          for (int k = 0; k < K; ++k) {
            const int e = m[s].routing.at(t, k);
            if (ep.owner(e) != d) continue;
            const int le = e - L.first_expert;
            REQUIRE(bit_equal(er[d].x[le].row(next[le]++), x[s].row(t)));
          }
      for (int le = 0; le < L.n_local; ++le) {
        const int64_t n = L.rows[le];
        REQUIRE(next[le] == n);
        REQUIRE(L.padded[le] % 128 == 0);
        REQUIRE(L.padded[le] >= n);
        REQUIRE(L.padded[le] < n + 128);
        if (n == 0) REQUIRE(L.padded[le] == 0);
        REQUIRE(L.offset[le + 1] - L.offset[le] == L.padded[le]);
        REQUIRE(er[d].x[le].rows() == L.padded[le]);
        REQUIRE(er[d].x[le].bottomRows(L.padded[le] - n).isZero());
        const int g = L.first_expert + le;
        if (g == 2 || g == 9) REQUIRE(n == 0);
        if (g == 5) REQUIRE(n > 128);
      }
    }

    // Combine: "expert" output y = (e + 1) · x; every slot gets its own expert's row back.
    std::vector<std::vector<Buffer>> back;
    for (int d = 0; d < ep_size; ++d) {
      std::vector<Mat<T>> y;
      for (int le = 0; le < er[d].layout.n_local; ++le)
        y.push_back(er[d].x[le] * static_cast<T>(er[d].layout.first_expert + le + 1));
      back.push_back(pack_combine<T>(er[d].layout, y, Wire::exact));
    }
    const auto got = all_to_all(back);
    for (int s = 0; s < ep_size; ++s) {
      const Mat<T> y_slots = unpack_combine<T>(m[s].plan, got[s]);
      REQUIRE(y_slots.rows() == static_cast<int64_t>(m[s].routing.tokens) * K);
      for (int t = 0; t < m[s].routing.tokens; ++t)
        for (int k = 0; k < K; ++k) {
          const Mat<T> want = x[s].row(t) * static_cast<T>(m[s].routing.at(t, k) + 1);
          REQUIRE(bit_equal(y_slots.row(t * K + k), want));
        }
    }

    // Backward: combine_b lands dy rows where the forward rows landed; dispatch_b brings them back.
    std::vector<Mat<T>> dy_slots;
    std::vector<std::vector<Buffer>> sendb;
    for (int s = 0; s < ep_size; ++s) {
      dy_slots.push_back(random_mat<T>(static_cast<int64_t>(m[s].routing.tokens) * K, H, 300 + static_cast<uint64_t>(s)));
      sendb.push_back(pack_combine_grad<T>(m[s].plan, dy_slots[s], Wire::exact));
    }
    const auto recvb = all_to_all(sendb);
    std::vector<std::vector<Buffer>> backb;
    for (int d = 0; d < ep_size; ++d) {
      const std::vector<Mat<T>> dy = unpack_combine_grad<T>(er[d].layout, recvb[d]);
      for (int s = 0; s < ep_size; ++s)
        for (size_t i = 0; i < er[d].layout.from[s].size(); ++i) {
          const auto& p = er[d].layout.from[s][i];
          const DispatchRow& row = m[s].plan.to[d][i];
          REQUIRE(bit_equal(dy[p.expert].row(p.row), dy_slots[s].row(row.token * K + row.slot)));
        }
      for (int le = 0; le < er[d].layout.n_local; ++le)
        REQUIRE(dy[le].bottomRows(er[d].layout.padded[le] - er[d].layout.rows[le]).isZero());
      backb.push_back(pack_dispatch_grad<T>(er[d].layout, dy, Wire::exact));
    }
    const auto gotb = all_to_all(backb);
    for (int s = 0; s < ep_size; ++s) REQUIRE(bit_equal(unpack_dispatch_grad<T>(m[s].plan, gotb[s]), dy_slots[s]));
  }
}

TEST_CASE("moe dispatch: BF16 and FP8 wires (1x128 power-of-two scales, row by row)", "[moe][dispatch]") {
  const int E = 8, K = 2, H = 200;  // two 128-blocks per row, the second partial
  const EpLayout ep(E, 2);
  std::vector<Member> m(2);
  std::vector<Mat<float>> x;
  for (int s = 0; s < 2; ++s) {
    m[s].routing = random_routing(9 + s, K, E, 400 + static_cast<uint64_t>(s), {});
    m[s].plan = make_dispatch_plan(ep, m[s].routing);
    Mat<float> xs = random_mat<float>(9 + s, H, 500 + static_cast<uint64_t>(s));
    xs.row(0) *= 1000.0f;  // rows of very different magnitudes
    xs.row(1) *= 1e-3f;
    xs.row(2).setZero();
    x.push_back(xs);
  }
  fp8::QuantOptions pow2;
  pow2.pow2_scales = true;
  auto fp8_row = [&](const Mat<float>& row) {
    const fp8::RowwiseFp8 q = fp8::quantize_rowwise(row.data(), 1, H, pow2);
    const std::vector<float> d = fp8::dequantize(q);
    return Mat<float>(Eigen::Map<const Mat<float>>(d.data(), 1, H));
  };
  auto bf16_row = [](const Mat<float>& row) { return Mat<float>(row.unaryExpr(&fp8::round_to_bf16)); };

  std::vector<std::vector<Buffer>> send;
  for (int s = 0; s < 2; ++s) {
    send.push_back(pack_dispatch<float>(m[s].plan, x[s], Wire::fp8));
    for (int d = 0; d < 2; ++d) {
      const size_t n = idx(m[s].plan.rows_to(d));
      REQUIRE(send[s][d].size() == 24 + 4 * n + n * H + n * 2 * 4);  // header, ids, codes, scales
    }
  }
  const auto recv = all_to_all(send);
  for (int d = 0; d < 2; ++d) {
    std::vector<fp8::RowwiseFp8> kept;
    const ExpertRows<float> er = unpack_dispatch<float>(ep, d, recv[d], kSegmentAlign, &kept);
    REQUIRE(kept.size() == idx(er.layout.n_local));
    for (int le = 0; le < er.layout.n_local; ++le) {
      // the FP8 segment as it came dequantises to exactly the rows handed to the experts
      REQUIRE(kept[le].rows == er.layout.padded[le]);
      const std::vector<float> deq = fp8::dequantize(kept[le]);
      REQUIRE(bit_equal(Eigen::Map<const Mat<float>>(deq.data(), kept[le].rows, H), er.x[le]));
      for (int64_t r = er.layout.rows[le]; r < kept[le].rows; ++r)
        for (int kb = 0; kb < kept[le].k_blocks(); ++kb) REQUIRE(kept[le].scale(static_cast<int>(r), kb) == 1.0f);
    }
    for (int s = 0; s < 2; ++s)
      for (size_t i = 0; i < er.layout.from[s].size(); ++i) {
        const auto& p = er.layout.from[s][i];
        const Mat<float> sent = x[s].row(m[s].plan.to[d][i].token);
        REQUIRE(bit_equal(er.x[p.expert].row(p.row), fp8_row(sent)));
      }
    // BF16 combine of the received rows
    const std::vector<Buffer> back = pack_combine<float>(er.layout, er.x, Wire::bf16);
    for (int s = 0; s < 2; ++s) {
      const size_t n = er.layout.from[s].size();
      REQUIRE(back[s].size() == 24 + n * H * 2);
    }
  }
  // FP8 of each row alone equals FP8 in any batch: rows quantise independently.
  for (int s = 0; s < 2; ++s) {
    const fp8::RowwiseFp8 q = fp8::quantize_rowwise(x[s].data(), static_cast<int>(x[s].rows()), H, pow2);
    const std::vector<float> d = fp8::dequantize(q);
    for (int t = 0; t < x[s].rows(); ++t)
      REQUIRE(bit_equal(Eigen::Map<const Mat<float>>(d.data() + idx(t) * H, 1, H), fp8_row(x[s].row(t))));
  }
  // BF16 round trip on the token side (dispatch_b shape)
  const EpLayout one(E, 1);
  Member a;
  a.routing = random_routing(5, K, E, 600, {});
  a.plan = make_dispatch_plan(one, a.routing);
  const ExpertRows<float> er1 = unpack_dispatch<float>(one, 0, pack_dispatch<float>(a.plan, x[0].topRows(5), Wire::exact));
  const Mat<float> back1 = unpack_dispatch_grad<float>(a.plan, pack_dispatch_grad<float>(er1.layout, er1.x, Wire::bf16));
  for (int t = 0; t < 5; ++t)
    for (int k = 0; k < K; ++k) REQUIRE(bit_equal(back1.row(t * K + k), bf16_row(x[0].row(t))));
}

TEST_CASE("moe dispatch: weighted sum over slots and its backward", "[moe][dispatch]") {
  const int tokens = 3, K = 3, H = 5;
  const Mat<double> y = random_mat(tokens * K, H, 700);
  const Mat<double> g = random_mat(tokens, K, 701);
  const Mat<double> dout = random_mat(tokens, H, 702);
  const Mat<double> out = weighted_sum_slots<double>(y, g);
  const SlotGrad<double> b = weighted_sum_slots_backward<double>(y, g, dout);
  for (int t = 0; t < tokens; ++t) {
    Mat<double> want = g(t, 0) * y.row(t * K);
    for (int k = 1; k < K; ++k) want += g(t, k) * y.row(t * K + k);
    REQUIRE(bit_equal(out.row(t), want));
    for (int k = 0; k < K; ++k) {
      CHECK(b.d_gate(t, k) == Approx(y.row(t * K + k).dot(dout.row(t))).epsilon(1e-14));
      REQUIRE(bit_equal(b.dy_slots.row(t * K + k), Mat<double>(g(t, k) * dout.row(t))));
    }
  }
  const Mat<double> s = sum_slots<double>(y, K);
  for (int t = 0; t < tokens; ++t) {
    const Mat<double> want = (y.row(t * K) + y.row(t * K + 1)) + y.row(t * K + 2);
    REQUIRE(bit_equal(s.row(t), want));
  }
}

TEST_CASE("moe dispatch: mismatched or damaged buffers are rejected", "[moe][dispatch]") {
  const EpLayout ep(8, 2);
  const Routing r = random_routing(4, 2, 8, 800, {});
  const DispatchPlan p = make_dispatch_plan(ep, r);
  const Mat<float> x = random_mat<float>(4, 16, 801);
  std::vector<Buffer> send = pack_dispatch<float>(p, x, Wire::exact);
  // a dispatch buffer where a combine buffer is expected
  REQUIRE_THROWS_AS(unpack_combine<float>(p, send), std::runtime_error);
  // float sender, double receiver
  REQUIRE_THROWS_AS(unpack_dispatch<double>(ep, 0, {send[0], send[0]}), std::runtime_error);
  // truncated
  std::vector<Buffer> cut = {send[0], send[0]};
  cut[1].resize(cut[1].size() - 1);
  REQUIRE_THROWS_AS(unpack_dispatch<float>(ep, 0, cut), std::runtime_error);
  // rows for experts another member owns
  REQUIRE_THROWS_AS(unpack_dispatch<float>(ep, 1, {send[0], send[0]}), std::runtime_error);
  // one buffer per member
  REQUIRE_THROWS_AS(unpack_dispatch<float>(ep, 0, {send[0]}), std::invalid_argument);
}

TEST_CASE("moe dispatch: the segment layout is unpack_dispatch's, with each source's rows contiguous",
          "[moe][dispatch]") {
  // spec::make_segment_layout is what both backends place received rows by; the CPU builds it from
  // the buffers' ids. Some experts (often a whole member's) get no rows; 0 / 1 / 37 / 128 tokens.
  std::mt19937_64 rng(42);
  constexpr int E = 16, K = 4;
  for (int ep : {1, 2, 4})
    for (int align : {128, 4})
      for (int rep = 0; rep < 3; ++rep) {
        CAPTURE(ep, align, rep);
        const EpLayout layout(E, ep);
        std::vector<int32_t> allowed;
        for (int e = 0; e < E; ++e)
          if (rng() % 3 != 0) allowed.push_back(e);
        if (allowed.empty()) allowed.push_back(5);
        const int token_choices[4] = {0, 1, 37, 128};
        std::vector<DispatchPlan> plans;
        std::vector<std::vector<Buffer>> sent;  // sent[s][d]
        for (int s = 0; s < ep; ++s) {
          Routing r;
          r.tokens = token_choices[(s + rep) % 4];
          r.top_k = K;
          for (int i = 0; i < r.tokens * K; ++i) r.expert.push_back(allowed[rng() % allowed.size()]);
          plans.push_back(make_dispatch_plan(layout, r));
          sent.push_back(pack_dispatch<float>(plans.back(), Mat<float>::Zero(r.tokens, 8), Wire::exact));
        }
        for (int d = 0; d < ep; ++d) {
          std::vector<Buffer> recv;
          std::vector<std::vector<int32_t>> ids_from;
          for (int s = 0; s < ep; ++s) {
            recv.push_back(sent[idx(s)][idx(d)]);
            std::vector<int32_t> ids;
            for (const DispatchRow& row : plans[idx(s)].to[idx(d)]) ids.push_back(row.expert);
            ids_from.push_back(ids);
          }
          const SegmentLayout got = tandem::spec::make_segment_layout(layout, d, align, ids_from);
          const SegmentLayout want = unpack_dispatch<float>(layout, d, recv, align).layout;
          CHECK(got.rows == want.rows);
          CHECK(got.padded == want.padded);
          CHECK(got.offset == want.offset);
          REQUIRE(got.from.size() == want.from.size());
          for (size_t s = 0; s < got.from.size(); ++s) {
            REQUIRE(got.from[s].size() == want.from[s].size());
            for (size_t i = 0; i < got.from[s].size(); ++i) {
              CHECK(got.from[s][i].expert == want.from[s][i].expert);
              CHECK(got.from[s][i].row == want.from[s][i].row);
            }
          }
          for (int e = 0; e < got.n_local; ++e) {
            CHECK(got.padded[idx(e)] % align == 0);
            // Source s's rows of expert e are exactly [src_first, src_first + src_count), in its order.
            for (int s = 0; s < ep; ++s) {
              std::vector<int32_t> rows;
              for (const SegmentLayout::Place& p : got.from[idx(s)])
                if (p.expert == e) rows.push_back(p.row);
              const int64_t first = got.src_first[idx(e)][idx(s)];
              REQUIRE(static_cast<int64_t>(rows.size()) == got.src_count[idx(e)][idx(s)]);
              for (size_t i = 0; i < rows.size(); ++i) CHECK(rows[i] == first + static_cast<int64_t>(i));
            }
          }
        }
      }
  // A row for an expert the member does not own is refused, naming the member.
  const EpLayout two(E, 2);
  CHECK_THROWS_WITH(tandem::spec::make_segment_layout(two, 1, 128, {{3}, {}}), Catch::Contains("member 1 does not own"));
}
