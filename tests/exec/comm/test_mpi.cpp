// exec/comm's MPI world, run by CTest `comm_mpi` as `mpiexec -n 2 tandem_comm_tests "[comm_mpi]"`:
// 4 ranks over 2 processes (ranks 0-1 in process 0, ranks 2-3 in process 1), every operation across
// the process boundary, and the failure contract across it. Hidden from a plain run ([.]): every
// case constructs an MpiWorld, which is collective over the processes. Each process checks its own
// ranks; the expected values are computable anywhere (the pattern functions), so nothing needs to
// be gathered for checking.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <string>
#include <vector>

#include "common/signed_index.h"
#include "exec/comm/mpi.h"
#include "rank_threads.h"

using tandem::idx;

using namespace tandem::comm;
using namespace tandem::comm::test;
using namespace std::chrono_literals;

namespace {

constexpr int kRanks = 4;

std::unique_ptr<World> mpi_world(std::chrono::milliseconds timeout, std::optional<FaultInjection> fault = {}) {
  CommOptions o;
  o.timeout = timeout;
  o.world_timeout = 60000ms;
  o.fault = fault;
  auto w = make_world(kRanks, o);
  REQUIRE(launched_under_mpi());
  REQUIRE(w->describe().rfind("MPI", 0) == 0);
  return w;
}

}  // namespace

TEST_CASE("comm mpi: make_world hosts a contiguous block of ranks per process", "[.][comm_mpi]") {
  auto w = mpi_world(5000ms);
  auto& mw = dynamic_cast<MpiWorld&>(*w);
  REQUIRE(kRanks % mw.processes() == 0);
  const int per = kRanks / mw.processes();
  std::vector<int> expect(idx(per));
  std::iota(expect.begin(), expect.end(), mw.process() * per);
  CHECK(w->local_ranks() == expect);
  CHECK(w->size() == kRanks);
  const int foreign = mw.processes() == 1 ? -1 : (mw.process() + 1) % mw.processes() * per;  // another process's
  CHECK_THROWS_AS(w->comm(foreign), CommError);
  WARN(w->describe());
}

TEST_CASE("comm mpi: send/recv across processes, by source and tag, large messages too", "[.][comm_mpi]") {
  auto w = mpi_world(10000ms);
  auto out = run_ranks(*w, [&](Communicator& comm, int rank) {
    const int next = (rank + 1) % kRanks, prev = (rank + kRanks - 1) % kRanks;
    const auto one = pattern_bytes(rank, next, 1, 100), two = pattern_bytes(rank, next, 2, 3);
    comm.send(next, 1, one.data(), one.size(), "ring tag 1");
    comm.send(next, 2, two.data(), two.size(), "ring tag 2");
    std::vector<std::byte> got(3);
    comm.recv(prev, 2, got.data(), 3, "ring recv tag 2");  // out of send order
    check(got == pattern_bytes(prev, rank, 2, 3), "tag 2 from " + std::to_string(prev));
    got.resize(100);
    comm.recv(prev, 1, got.data(), 100, "ring recv tag 1");
    check(got == pattern_bytes(prev, rank, 1, 100), "tag 1 from " + std::to_string(prev));
    // 4 MiB from rank 0 to rank 3 (other process: MPI's rendezvous path).
    constexpr std::size_t big = 4u << 20;
    if (rank == 0) {
      const auto b = pattern_bytes(0, 3, 9, big);
      comm.send(3, 9, b.data(), b.size(), "pp_send big");
    }
    if (rank == 3) {
      std::vector<std::byte> b(big);
      comm.recv(0, 9, b.data(), b.size(), "pp_recv big");
      check(b == pattern_bytes(0, 3, 9, big), "4 MiB message");
    }
  });
  INFO(w->describe() << "\n" << describe(out));
  for (const Outcome& o : out) CHECK(o.ok());
  CHECK(w->undelivered().empty());
}

TEST_CASE("comm mpi: all_to_all_v, reduce_scatter_sum, all_gather and barrier across processes", "[.][comm_mpi]") {
  auto w = mpi_world(10000ms);
  const std::vector<int> world{0, 1, 2, 3}, strided_a{0, 2}, strided_b{3, 1};
  const std::vector<std::size_t> counts{5, 0, 300, 1};
  const std::size_t total = 306;
  // Expected reduce-scatter result over the world group: the sequential sum in group order.
  std::vector<float> expected(total);
  for (std::size_t k = 0; k < total; ++k) {
    float acc = wide_float(world[0], 1, k);
    for (std::size_t m = 1; m < world.size(); ++m) acc += wide_float(world[m], 1, k);
    expected[k] = acc;
  }
  auto out = run_ranks(*w, [&](Communicator& comm, int rank) {
    for (int round = 0; round < 6; ++round) {
      // World all-to-all and a strided-pair all-to-all (both cross the process boundary).
      for (const std::vector<int>* g : {&world, rank % 2 == 0 ? &strided_a : &strided_b}) {
        std::vector<std::vector<std::byte>> parts(g->size());
        std::vector<ConstBytes> send(g->size());
        for (std::size_t i = 0; i < g->size(); ++i) {
          parts[i] = pattern_bytes(rank, (*g)[i], round, pattern_size(rank, (*g)[i], round, 5000));
          send[i] = {parts[i].data(), parts[i].size()};
        }
        std::vector<std::vector<std::byte>> recv;
        comm.all_to_all_v(*g, send, recv, "dispatch_f round " + std::to_string(round));
        for (std::size_t i = 0; i < g->size(); ++i) {
          check(recv[i] == pattern_bytes((*g)[i], rank, round, pattern_size((*g)[i], rank, round, 5000)),
                "all_to_all_v from rank " + std::to_string((*g)[i]));
        }
      }
      comm.barrier(world, "barrier");
    }
    const auto m = idx(rank);  // world group: member index == rank
    std::vector<float> in(total);
    for (std::size_t k = 0; k < total; ++k) in[k] = wide_float(rank, 1, k);
    std::vector<float> shard(counts[m]);
    comm.reduce_scatter_sum(world, in.data(), shard.data(), counts, "dp_reduce_scatter");
    std::size_t off = 0;
    for (std::size_t i = 0; i < m; ++i) off += counts[i];
    check(same_bits(shard, std::vector<float>(expected.begin() + static_cast<std::ptrdiff_t>(off),
                                              expected.begin() + static_cast<std::ptrdiff_t>(off + counts[m]))),
          "reduce_scatter_sum bit-identical to the sequential sum");
    std::vector<std::size_t> bytes(counts.size());
    for (std::size_t i = 0; i < counts.size(); ++i) bytes[i] = counts[i] * sizeof(float);
    std::vector<float> full(total, -1.0f);
    comm.all_gather_v(world, shard.data(), full.data(), bytes, "dp_all_gather");
    check(same_bits(full, expected), "all_gather_v of the shards is the full sum");
    const int mine = rank * 11;
    std::vector<int> pair(2);
    comm.all_gather(rank % 2 == 0 ? strided_a : strided_b, &mine, sizeof mine, pair.data(), "pair gather");
    check(rank % 2 == 0 ? pair == std::vector<int>{0, 22} : pair == std::vector<int>{33, 11}, "pair all_gather");
  });
  INFO(w->describe() << "\n" << describe(out));
  for (const Outcome& o : out) CHECK(o.ok());
  CHECK(w->undelivered().empty());
}

TEST_CASE("comm mpi: a recv from the other process that never comes times out naming that rank", "[.][comm_mpi]") {
  auto w = mpi_world(300ms);
  auto out = run_ranks(*w, [&](Communicator& comm, int rank) {
    float x = 0;
    if (rank == 1) comm.recv(2, 7, &x, sizeof x, "pp_recv F mb 4 stage 1");
  });
  INFO(w->describe() << "\n" << describe(out));
  if (out[1].ran) {
    REQUIRE(out[1].error);
    CHECK(out[1].error->kind() == CommErrorKind::timeout);
    CHECK(std::string(out[1].error->what()) ==
          "rank 1: recv \"pp_recv F mb 4 stage 1\" timed out after 300 ms waiting for rank 2");
    CHECK(out[1].seconds < 3.0);
  }
}

TEST_CASE("comm mpi: an announced fault in one process fails the other process's ranks at once", "[.][comm_mpi]") {
  // 20 s timeout: ranks 0 and 1 fail because process 1 tells them, not by timing out.
  auto w = mpi_world(20000ms, FaultInjection{3, 4, FaultInjection::Mode::announced});
  const std::vector<int> g{0, 1, 2, 3};
  auto out = run_ranks(*w, [&](Communicator& comm, int rank) {
    for (int step = 0; step < 20; ++step) {
      comm.barrier(g, "step " + std::to_string(step));
      const float v = static_cast<float>(rank);
      std::vector<float> all(4);
      comm.all_gather(g, &v, sizeof v, all.data(), "gather " + std::to_string(step));
    }
  });
  INFO(w->describe() << "\n" << describe(out));
  for (int r : w->local_ranks()) {
    const Outcome& o = out[idx(r)];
    REQUIRE(o.error);
    CHECK(o.seconds < 5.0);
    if (r == 3) {
      CHECK(o.error->kind() == CommErrorKind::injected_fault);
      CHECK(std::string(o.error->what()) == "rank 3: all_gather_v \"gather 1\" died: injected fault at operation 4");
    } else {
      CHECK(o.error->kind() == CommErrorKind::peer_failed);
      CHECK(o.error->first_failed_rank() == 3);
      CHECK(contains(o.error->what(), "rank 3 failed first (rank 3: all_gather_v \"gather 1\" died"));
    }
  }
}

TEST_CASE("comm mpi: a silent fault in one process is named by the other process's timeouts", "[.][comm_mpi]") {
  auto w = mpi_world(300ms, FaultInjection{2, 2, FaultInjection::Mode::silent});
  const std::vector<int> g{0, 1, 2, 3};
  auto out = run_ranks(*w, [&](Communicator& comm, int) {
    for (int step = 0; step < 10; ++step) comm.barrier(g, "step " + std::to_string(step));
  });
  INFO(w->describe() << "\n" << describe(out));
  for (int r : w->local_ranks()) {
    const Outcome& o = out[idx(r)];
    REQUIRE(o.error);
    CHECK(o.seconds < 5.0);
    if (r == 2) {
      CHECK(o.error->kind() == CommErrorKind::injected_fault);
    } else {
      const auto& peers = o.error->peers();
      CHECK(std::find(peers.begin(), peers.end(), 2) != peers.end());
      CHECK(contains(o.error->what(), "waiting for rank"));
    }
  }
}
