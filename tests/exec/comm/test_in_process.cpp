// exec/comm on the in-process world: matching, all-to-all-v with ragged and empty pairs on strided
// groups, ZeRO-1 collectives bit-identical to the sequential sum in group order, concurrency, and
// the failure contract (timeouts naming rank, label and peer; injected faults; world abort).
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/signed_index.h"
#include "exec/comm/in_process.h"
#include "rank_threads.h"

using tandem::idx;

using namespace tandem::comm;
using namespace tandem::comm::test;
using namespace std::chrono_literals;

namespace {

CommOptions with_timeout(std::chrono::milliseconds t) {
  CommOptions o;
  o.timeout = t;
  return o;
}

// The error names `rank` among the peers it waited for (and so in its message).
bool waited_for(const CommError& e, int rank) {
  return std::find(e.peers().begin(), e.peers().end(), rank) != e.peers().end() &&
         contains(e.what(), "waiting for rank");
}

void require_all_ok(const std::vector<Outcome>& out) {
  INFO(describe(out));
  for (const Outcome& o : out) REQUIRE(o.ok());
}

// The sequential reference: acc = in_0; acc += in_1; ... over the members in the given order.
std::vector<float> sequential_sum(const std::vector<std::vector<float>>& blocks, const std::vector<std::size_t>& order) {
  std::vector<float> acc = blocks[order[0]];
  for (std::size_t m = 1; m < order.size(); ++m) {
    for (std::size_t k = 0; k < acc.size(); ++k) acc[k] += blocks[order[m]][k];
  }
  return acc;
}

}  // namespace

TEST_CASE("comm: send/recv match by source and tag, oldest first", "[comm]") {
  InProcessWorld world(3, with_timeout(5000ms));
  const auto a1 = pattern_bytes(0, 1, 1, 8), a2 = pattern_bytes(0, 1, 2, 16), b = pattern_bytes(0, 1, 3, 5),
             c = pattern_bytes(0, 1, 4, 0), z = pattern_bytes(2, 1, 1, 8), self = pattern_bytes(1, 1, 9, 3);
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    if (rank == 0) {
      comm.send(1, 1, a1.data(), a1.size(), "a1");
      comm.send(1, 2, b.data(), b.size(), "b");
      comm.send(1, 1, a2.data(), a2.size(), "a2");
      comm.send(1, 3, c.data(), c.size(), "c");  // zero bytes
    } else if (rank == 2) {
      comm.send(1, 1, z.data(), z.size(), "z");  // same tag as a1, other source
    } else {
      std::vector<std::byte> got;
      auto take = [&](int peer, int tag, std::size_t n) {
        got.assign(n, std::byte{0xee});
        comm.recv(peer, tag, got.data(), n, "recv");
        return got;
      };
      // Received in another order than sent: matching is by (source, tag), FIFO within one.
      check(take(0, 3, 0).empty(), "zero-byte message");
      check(take(2, 1, 8) == z, "tag 1 from rank 2");
      check(take(0, 1, 8) == a1, "first tag-1 message from rank 0");
      check(take(0, 2, 5) == b, "tag 2 from rank 0");
      check(take(0, 1, 16) == a2, "second tag-1 message from rank 0");
      comm.send(1, 9, self.data(), self.size(), "to itself");
      check(take(1, 9, 3) == self, "a message to itself");
    }
  });
  require_all_ok(out);
  CHECK(world.undelivered().empty());
  CHECK_FALSE(world.failure());
}

TEST_CASE("comm: a recv of the wrong size is a mismatch naming the sender", "[comm]") {
  InProcessWorld world(2, with_timeout(5000ms));
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    std::vector<std::byte> buf(16);
    if (rank == 0) comm.send(1, 4, buf.data(), 8, "pp_send F mb 1");
    if (rank == 1) comm.recv(0, 4, buf.data(), 16, "pp_recv F mb 1");
  });
  REQUIRE(out[1].error);
  CHECK(out[1].error->kind() == CommErrorKind::mismatch);
  CHECK(out[1].error->peers() == std::vector<int>{0});
  CHECK(std::string(out[1].error->what()) ==
        "rank 1: recv \"pp_recv F mb 1\" expected 16 bytes with tag 4 but rank 0 sent 8 (\"pp_send F mb 1\")");
}

TEST_CASE("comm: all_to_all_v with ragged and empty pairs on two strided groups at once", "[comm]") {
  // Ranks {1,3,5,7} and {6,4,2,0} of 8 (the second one not in rank order) run their all-to-alls at
  // the same time; half the rounds learn sizes inside the call, half exchange counts first and
  // receive into their own buffers.
  InProcessWorld world(8, with_timeout(10000ms));
  const std::vector<int> odd{1, 3, 5, 7}, even{6, 4, 2, 0};
  constexpr int rounds = 24;
  std::vector<std::size_t> checked(8, 0), empty_pairs(8, 0);
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    const std::vector<int>& g = rank % 2 ? odd : even;
    for (int round = 0; round < rounds; ++round) {
      std::vector<std::vector<std::byte>> parts(g.size());
      std::vector<ConstBytes> send(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) {
        parts[i] = pattern_bytes(rank, g[i], round, pattern_size(rank, g[i], round, 700));
        send[i] = {parts[i].data(), parts[i].size()};
      }
      const std::string label = "dispatch_f layer " + std::to_string(round) + " mb 0";
      std::vector<std::vector<std::byte>> recv;
      if (round % 2 == 0) {
        comm.all_to_all_v(g, send, recv, label);
      } else {
        std::vector<std::size_t> send_counts(g.size()), recv_counts(g.size());
        for (std::size_t i = 0; i < g.size(); ++i) send_counts[i] = parts[i].size();
        comm.all_to_all_counts(g, send_counts, recv_counts, label + " counts");
        recv.resize(g.size());
        std::vector<MutableBytes> into(g.size());
        for (std::size_t i = 0; i < g.size(); ++i) {
          recv[i].assign(recv_counts[i], std::byte{0xee});
          into[i] = {recv[i].data(), recv[i].size()};
        }
        comm.all_to_all_v(g, send, std::span<const MutableBytes>(into), label);
      }
      check(recv.size() == g.size(), "one buffer per member");
      for (std::size_t i = 0; i < g.size(); ++i) {
        const auto expect = pattern_bytes(g[i], rank, round, pattern_size(g[i], rank, round, 700));
        check(recv[i] == expect, "round " + std::to_string(round) + ": bytes from rank " + std::to_string(g[i]));
        checked[idx(rank)] += expect.size();
        empty_pairs[idx(rank)] += expect.empty();
      }
    }
  });
  require_all_ok(out);
  for (int r = 0; r < 8; ++r) {
    CHECK(checked[idx(r)] > 0);
    CHECK(empty_pairs[idx(r)] > 0);  // zero-length pairs did occur
  }
  CHECK(world.undelivered().empty());
}

TEST_CASE("comm: reduce_scatter_sum and all_gather are bit-identical to the sequential sum in group order",
          "[comm]") {
  // Group {5,0,3,1} of a world of 6 (ranks 2 and 4 idle), uneven blocks including an empty one.
  const std::vector<int> g{5, 0, 3, 1};
  const std::vector<std::size_t> counts{3, 0, 1000, 17};
  const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
  std::vector<std::size_t> offset(g.size(), 0);
  for (std::size_t i = 1; i < g.size(); ++i) offset[i] = offset[i - 1] + counts[i - 1];
  std::vector<std::vector<float>> input(g.size());  // per member, all blocks
  for (std::size_t m = 0; m < g.size(); ++m) {
    for (std::size_t k = 0; k < total; ++k) input[m].push_back(wide_float(g[m], 0, k));
  }
  // Expected: for block j, the sequential sum over members 0, 1, 2, 3 (group order).
  std::vector<std::size_t> order(g.size());
  std::iota(order.begin(), order.end(), 0);
  const std::vector<float> expected_all = sequential_sum(input, order);
  // The test can tell orders apart: rank order ({0,1,3,5} = members 1,3,2,0) gives other bits.
  CHECK_FALSE(same_bits(expected_all, sequential_sum(input, {1, 3, 2, 0})));

  auto run_once = [&](bool in_place) {
    InProcessWorld world(6, with_timeout(10000ms));
    std::vector<std::vector<float>> shard(6), gathered(6);
    auto out = run_ranks(world, [&](Communicator& comm, int rank) {
      const auto it = std::find(g.begin(), g.end(), rank);
      if (it == g.end()) return;
      const auto m = idx(it - g.begin());
      std::vector<float> in = input[m];
      std::vector<float>& mine = shard[idx(rank)];
      std::vector<float>& all = gathered[idx(rank)];
      all.assign(total, -1.0f);
      std::vector<std::size_t> bytes(g.size());
      for (std::size_t i = 0; i < g.size(); ++i) bytes[i] = counts[i] * sizeof(float);
      if (in_place) {
        // ZeRO's buffer reuse: reduce into the own block of the gradient buffer, gather in place.
        comm.reduce_scatter_sum(g, in.data(), in.data() + offset[m], counts, "dp_reduce_scatter");
        mine.assign(in.begin() + static_cast<std::ptrdiff_t>(offset[m]),
                    in.begin() + static_cast<std::ptrdiff_t>(offset[m] + counts[m]));
        comm.all_gather_v(g, in.data() + offset[m], in.data(), bytes, "dp_all_gather");
        all = in;
      } else {
        mine.assign(counts[m], -1.0f);
        comm.reduce_scatter_sum(g, in.data(), mine.data(), counts, "dp_reduce_scatter");
        comm.all_gather_v(g, mine.data(), all.data(), bytes, "dp_all_gather");
      }
    });
    require_all_ok(out);
    for (std::size_t m = 0; m < g.size(); ++m) {
      const auto r = idx(g[m]);
      const std::vector<float> expect(expected_all.begin() + static_cast<std::ptrdiff_t>(offset[m]),
                                      expected_all.begin() + static_cast<std::ptrdiff_t>(offset[m] + counts[m]));
      INFO("member " << m << " (rank " << g[m] << ")");
      CHECK(same_bits(shard[r], expect));
      CHECK(same_bits(gathered[r], expected_all));
    }
    return shard;
  };
  const auto first = run_once(false);
  const auto second = run_once(false);
  const auto in_place = run_once(true);
  for (std::size_t r = 0; r < 6; ++r) {
    CHECK(same_bits(first[r], second[r]));  // run to run
    CHECK(same_bits(first[r], in_place[r]));
  }
}

TEST_CASE("comm: all_gather of equal parts and barrier", "[comm]") {
  InProcessWorld world(5, with_timeout(5000ms));
  const std::vector<int> g{4, 2, 0};
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    if (rank % 2) return;
    const auto mine = pattern_bytes(rank, 0, 5, 7);
    std::vector<std::byte> all(7 * g.size());
    comm.barrier(g, "before");
    comm.all_gather(g, mine.data(), mine.size(), all.data(), "gather 7 bytes each");
    for (std::size_t i = 0; i < g.size(); ++i) {
      check(std::equal(all.begin() + static_cast<std::ptrdiff_t>(7 * i),
                       all.begin() + static_cast<std::ptrdiff_t>(7 * i + 7), pattern_bytes(g[i], 0, 5, 7).begin()),
            "part of member " + std::to_string(i));
    }
    comm.barrier(g, "after");
  });
  require_all_ok(out);
}

TEST_CASE("comm: one rank runs collectives on two groups from two threads at once", "[comm]") {
  // Thread A of every rank: all-to-alls over the world. Thread B: pair collectives and sends
  // within {0,1} and {2,3}. Each group's calls are ordered, so the contract holds.
  InProcessWorld world(4, with_timeout(10000ms));
  const std::vector<int> all{0, 1, 2, 3};
  constexpr int rounds = 30;
  std::vector<std::string> errors(8);
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    const std::vector<int> pair = rank < 2 ? std::vector<int>{0, 1} : std::vector<int>{2, 3};
    const int partner = rank ^ 1;
    auto guarded = [&](int slot, auto fn) {
      try {
        fn();
      } catch (const std::exception& e) {
        errors[idx(slot)] = e.what();
      }
    };
    std::thread b([&] {
      guarded(2 * rank + 1, [&] {
        for (int round = 0; round < rounds; ++round) {
          comm.barrier(pair, "pair barrier");
          const float mine = static_cast<float>(rank * 100 + round);
          float both[2] = {0, 0};
          comm.all_gather(pair, &mine, sizeof mine, both, "pair gather");
          check(both[0] == static_cast<float>(pair[0] * 100 + round) &&
                    both[1] == static_cast<float>(pair[1] * 100 + round),
                "pair gather");
          const auto msg = pattern_bytes(rank, partner, round, 33);
          comm.send(partner, 100 + round, msg.data(), msg.size(), "pp_send");
          std::vector<std::byte> got(33);
          comm.recv(partner, 100 + round, got.data(), got.size(), "pp_recv");
          check(got == pattern_bytes(partner, rank, round, 33), "pair send/recv");
        }
      });
    });
    guarded(2 * rank, [&] {
      for (int round = 0; round < rounds; ++round) {
        std::vector<std::vector<std::byte>> parts(4);
        std::vector<ConstBytes> send(4);
        for (int i = 0; i < 4; ++i) {
          parts[idx(i)] = pattern_bytes(rank, i, round, pattern_size(rank, i, round, 200));
          send[idx(i)] = {parts[idx(i)].data(), parts[idx(i)].size()};
        }
        std::vector<std::vector<std::byte>> recv;
        comm.all_to_all_v(all, send, recv, "combine_f");
        for (int i = 0; i < 4; ++i) {
          check(recv[idx(i)] == pattern_bytes(i, rank, round, pattern_size(i, rank, round, 200)),
                "world all-to-all");
        }
      }
    });
    b.join();
  });
  require_all_ok(out);
  for (const std::string& e : errors) CHECK(e == "");
}

TEST_CASE("comm: a recv nobody sends to times out naming rank, label and peer", "[comm]") {
  InProcessWorld world(2, with_timeout(200ms));
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    std::vector<std::byte> buf(16);
    if (rank == 1) comm.recv(0, 5, buf.data(), buf.size(), "pp_recv F mb 4 stage 2");
  });
  REQUIRE(out[1].error);
  const CommError& e = *out[1].error;
  CHECK(e.kind() == CommErrorKind::timeout);
  CHECK(e.rank() == 1);
  CHECK(e.op() == "recv");
  CHECK(e.label() == "pp_recv F mb 4 stage 2");
  CHECK(e.peers() == std::vector<int>{0});
  CHECK(std::string(e.what()) == "rank 1: recv \"pp_recv F mb 4 stage 2\" timed out after 200 ms waiting for rank 0");
  CHECK(out[1].seconds >= 0.19);
  CHECK(out[1].seconds < 2.0);
  REQUIRE(world.failure());
  CHECK(world.failure()->rank == 1);
}

TEST_CASE("comm: a rank that never joins an all-to-all is named by every other member", "[comm]") {
  InProcessWorld world(4, with_timeout(200ms));
  const std::vector<int> g{0, 1, 2, 3};
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    if (rank == 2) return;  // never posts its part, never takes the others'
    std::vector<std::byte> part(10);
    std::vector<ConstBytes> send(4, ConstBytes{part.data(), part.size()});
    std::vector<std::vector<std::byte>> recv;
    comm.all_to_all_v(g, send, recv, "dispatch_f layer 3 mb 5");
  });
  INFO(describe(out));
  int timeouts = 0;
  for (int r : {0, 1, 3}) {
    REQUIRE(out[idx(r)].error);
    const CommError& e = *out[idx(r)].error;
    CHECK(e.label() == "dispatch_f layer 3 mb 5");
    CHECK(waited_for(e, 2));
    if (e.kind() == CommErrorKind::timeout) {
      ++timeouts;
      // Exactly rank 2 unless a member's thread started more than 200 ms late.
      CHECK(contains(e.what(), "all_to_all_v \"dispatch_f layer 3 mb 5\" timed out after 200 ms waiting for rank"));
    } else {
      CHECK(e.kind() == CommErrorKind::peer_failed);
    }
    CHECK(out[idx(r)].seconds < 2.0);
  }
  CHECK(timeouts >= 1);
}

TEST_CASE("comm: a message nobody receives is listed as undelivered", "[comm]") {
  InProcessWorld world(2, with_timeout(1000ms));
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    std::vector<std::byte> buf(64);
    if (rank == 0) comm.send(1, 7, buf.data(), buf.size(), "pp_send F mb 3");  // eager: returns
  });
  require_all_ok(out);
  CHECK(world.undelivered() ==
        std::vector<std::string>{"rank 0 -> rank 1: send \"pp_send F mb 3\" tag 7, 64 bytes, never received"});
  CHECK(world.undelivered().empty());  // reported once
}

TEST_CASE("comm: an announced fault fails the others at once, naming the dead rank", "[comm]") {
  // A 10 s timeout: the others must fail because they are told, not because they time out.
  CommOptions o = with_timeout(10000ms);
  o.fault = FaultInjection{2, 3, FaultInjection::Mode::announced};
  InProcessWorld world(4, o);
  const std::vector<int> g{0, 1, 2, 3};
  const auto t0 = std::chrono::steady_clock::now();
  auto out = run_ranks(world, [&](Communicator& comm, int) {
    for (int step = 0; step < 10; ++step) {
      comm.barrier(g, "step " + std::to_string(step) + " barrier");
      std::vector<std::byte> part(4);
      std::vector<ConstBytes> send(4, ConstBytes{part.data(), part.size()});
      std::vector<std::vector<std::byte>> recv;
      comm.all_to_all_v(g, send, recv, "step " + std::to_string(step) + " dispatch");
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  INFO(describe(out));
  CHECK(seconds < 2.0);
  REQUIRE(out[2].error);
  CHECK(out[2].error->kind() == CommErrorKind::injected_fault);
  CHECK(std::string(out[2].error->what()) == "rank 2: barrier \"step 1 barrier\" died: injected fault at operation 3");
  for (int r : {0, 1, 3}) {
    REQUIRE(out[idx(r)].error);
    const CommError& e = *out[idx(r)].error;
    CHECK(e.kind() == CommErrorKind::peer_failed);
    CHECK(e.first_failed_rank() == 2);
    CHECK(contains(e.what(), "rank 2 failed first (rank 2: barrier \"step 1 barrier\" died: injected fault"));
  }
  REQUIRE(world.failure());
  CHECK(world.failure()->rank == 2);
}

TEST_CASE("comm: a silent fault is found by the others' timeouts, which name the dead rank", "[comm]") {
  CommOptions o = with_timeout(200ms);
  o.fault = FaultInjection{2, 3, FaultInjection::Mode::silent};
  InProcessWorld world(4, o);
  const std::vector<int> g{0, 1, 2, 3};
  auto out = run_ranks(world, [&](Communicator& comm, int) {
    for (int step = 0; step < 10; ++step) comm.barrier(g, "step " + std::to_string(step));
  });
  INFO(describe(out));
  REQUIRE(out[2].error);
  CHECK(out[2].error->kind() == CommErrorKind::injected_fault);
  int timeouts = 0;
  for (int r : {0, 1, 3}) {
    REQUIRE(out[idx(r)].error);
    const CommError& e = *out[idx(r)].error;
    CHECK(waited_for(e, 2));
    timeouts += e.kind() == CommErrorKind::timeout;
    CHECK(out[idx(r)].seconds < 2.0);
  }
  CHECK(timeouts >= 1);
  REQUIRE(world.failure());
  CHECK(world.failure()->rank != 2);  // nobody was told; the first to time out failed the world
  CHECK(contains(world.failure()->reason, "waiting for rank"));
}

TEST_CASE("comm: abort() from the executor wakes ranks blocked on others", "[comm]") {
  InProcessWorld world(3, with_timeout(10000ms));
  auto out = run_ranks(world, [&](Communicator& comm, int rank) {
    if (rank == 0) {
      std::this_thread::sleep_for(50ms);
      comm.abort("loss is NaN at mb 3");
      return;
    }
    float x = 0;
    comm.recv(rank == 1 ? 2 : 1, 0, &x, sizeof x, "pp_recv B mb 2");  // blocked on a live rank
  });
  INFO(describe(out));
  CHECK(out[0].ok());
  for (int r : {1, 2}) {
    REQUIRE(out[idx(r)].error);
    const CommError& e = *out[idx(r)].error;
    CHECK(e.kind() == CommErrorKind::peer_failed);
    CHECK(e.first_failed_rank() == 0);
    CHECK(contains(e.what(), "rank 0 failed first (rank 0 called abort: loss is NaN at mb 3)"));
    CHECK(out[idx(r)].seconds < 2.0);
  }
  // A failed world stays failed.
  float x = 0;
  CHECK_THROWS_AS(world.comm(1).send(2, 0, &x, sizeof x, "late"), CommError);
}

TEST_CASE("comm: mismatched collectives fail instead of mixing data", "[comm]") {
  SECTION("different operations") {
    InProcessWorld world(2, with_timeout(5000ms));
    const std::vector<int> g{0, 1};
    auto out = run_ranks(world, [&](Communicator& comm, int rank) {
      float x = 1, both[2];
      if (rank == 0) comm.all_gather(g, &x, sizeof x, both, "dp_all_gather");
      if (rank == 1) comm.barrier(g, "end of step");
    });
    INFO(describe(out));
    bool mismatch = false;
    for (const Outcome& o : out) {
      REQUIRE(o.error);
      if (o.error->kind() == CommErrorKind::mismatch) mismatch = true;
    }
    CHECK(mismatch);
    if (out[0].error->kind() == CommErrorKind::mismatch) {
      CHECK(contains(out[0].error->what(), "met rank 1's barrier \"end of step\""));
    }
  }
  SECTION("different reduce-scatter counts") {
    InProcessWorld world(2, with_timeout(5000ms));
    const std::vector<int> g{0, 1};
    auto out = run_ranks(world, [&](Communicator& comm, int rank) {
      std::vector<float> in(8, 1.0f), o(8);
      const std::vector<std::size_t> counts = rank == 0 ? std::vector<std::size_t>{4, 4} : std::vector<std::size_t>{3, 5};
      comm.reduce_scatter_sum(g, in.data(), o.data(), counts, "dp_reduce_scatter");
    });
    INFO(describe(out));
    REQUIRE(out[0].error);
    REQUIRE(out[1].error);
    CHECK((out[0].error->kind() == CommErrorKind::mismatch || out[1].error->kind() == CommErrorKind::mismatch));
  }
}

TEST_CASE("comm: bad arguments are errors that name the call", "[comm]") {
  auto error_of = [](auto fn) -> std::optional<CommError> {
    InProcessWorld world(4, with_timeout(1000ms));
    try {
      fn(world);
    } catch (const CommError& e) {
      // The failure of one rank is the failure of the world.
      float x = 0;
      CHECK_THROWS_AS(world.comm(3).recv(0, 0, &x, sizeof x, "after"), CommError);
      return e;
    }
    return std::nullopt;
  };
  float x = 0;
  auto e = error_of([&](World& w) { w.comm(0).send(4, 0, &x, sizeof x, "pp_send"); });
  REQUIRE(e);
  CHECK(e->kind() == CommErrorKind::invalid_argument);
  CHECK(std::string(e->what()) == "rank 0: send \"pp_send\" peer 4 is not a rank of this world of 4");

  e = error_of([&](World& w) { w.comm(0).recv(1, -3, &x, sizeof x, "pp_recv"); });
  REQUIRE(e);
  CHECK(contains(e->what(), "tag -3 is negative"));

  e = error_of([&](World& w) { w.comm(2).barrier(std::vector<int>{0, 1}, "ep barrier"); });
  REQUIRE(e);
  CHECK(std::string(e->what()) == "rank 2: barrier \"ep barrier\" group {0,1} does not contain the caller");

  e = error_of([&](World& w) { w.comm(1).barrier(std::vector<int>{0, 1, 1}, "dup"); });
  REQUIRE(e);
  CHECK(contains(e->what(), "names rank 1 twice"));

  e = error_of([&](World& w) {
    std::vector<ConstBytes> send(3);
    std::vector<std::vector<std::byte>> recv;
    w.comm(0).all_to_all_v(std::vector<int>{0, 1}, send, recv, "dispatch");
  });
  REQUIRE(e);
  CHECK(contains(e->what(), "3 send buffers for a group of 2"));

  e = error_of([&](World& w) { w.comm(0).send(1, 0, nullptr, 4, "null"); });
  REQUIRE(e);
  CHECK(contains(e->what(), "the send buffer is null but has 4 bytes"));

  CHECK_THROWS_AS(InProcessWorld(0), CommError);
  CHECK_THROWS_AS(InProcessWorld(2, with_timeout(0ms)), CommError);
  InProcessWorld w(2);
  CHECK_THROWS_AS(w.comm(2), CommError);
}

TEST_CASE("comm: make_world without an MPI launcher is the in-process world", "[comm]") {
  if (launched_under_mpi()) return;  // this case is about plain runs
  auto world = make_world(3, with_timeout(1000ms));
  CHECK(world->describe() == "in-process, 3 ranks");
  CHECK(world->size() == 3);
  CHECK(world->local_ranks() == std::vector<int>{0, 1, 2});
}

namespace {
// Sets (or, with nullptr, unsets) an environment variable for one scope and restores it after.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) ::setenv(name, value, 1);
    else ::unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_, old_->c_str(), 1);
    else ::unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};
}  // namespace

// srun --mpi=pmix sets neither OMPI_COMM_WORLD_SIZE nor PMI_SIZE: missing it would run every srun
// task as its own whole job.
TEST_CASE("comm: a PMIx launch (srun --mpi=pmix) counts as an MPI launcher", "[comm]") {
  if (launched_under_mpi()) return;  // this case is about plain runs
  {
    ScopedEnv no_task_count("SLURM_STEP_NUM_TASKS", nullptr);  // tests run inside a Slurm step have one
    ScopedEnv pmix("PMIX_RANK", "0");
    CHECK(launched_under_mpi());
#ifndef TANDEM_HAVE_MPI
    // No MPI in this build and no task count: refused rather than run as one of several copies.
    try {
      make_world(2, with_timeout(1000ms));
      FAIL("make_world accepted an unknown number of launcher processes without MPI");
    } catch (const CommError& e) {
      CHECK(contains(e.what(), "an unknown number of processes"));
    }
    ScopedEnv tasks("SLURM_STEP_NUM_TASKS", "1");
    CHECK(make_world(2, with_timeout(1000ms))->describe() == "in-process, 2 ranks");
#endif
  }
  CHECK_FALSE(launched_under_mpi());
}
