// GPU checks of the device communicators (exec/backends/cuda/comm/device_comm.h):
//   virtual_ranks  VirtualRankWorld, 4 ranks on device 0, each on its own thread with its own comm
//                  stream: a pp ring with several tags (matched by tag, FIFO per tag, empty message,
//                  send buffer overwritten on the stream right after the send), all_to_all_v with
//                  uneven and zero sizes on an unsorted group (sizes exchanged with
//                  all_to_all_counts), reduce_scatter_sum with unequal counts (and in place, on a
//                  permuted group) BIT-IDENTICAL to the host in-process world, all_gather_v (and in
//                  place), a sub-group {3,1} while {0,2} check the barrier's stream ordering, a
//                  timeout (CommError names rank, label and peer; the world fails), a size mismatch,
//                  an undelivered message, and 256 back-to-back 1 MiB sends whose staging is
//                  recycled (pool usage 0 afterwards, device free memory back within 16 MiB).
//   nccl_comm      NcclLocalWorld over every visible GPU (ncclCommInitAll), one thread per rank:
//                  send/recv (to self on one GPU; pairs with >= 2), all_to_all_v, reduce_scatter_sum
//                  (equal, unequal = padded, permuted group), all_gather_v (equal, unequal, in
//                  place), barrier, a singleton sub-group, and a timeout on a second world. Skipped
//                  without NCCL.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "common/signed_index.h"
#include "exec/comm/comm_error.h"
#include "exec/comm/in_process.h"
#include "exec/backends/cuda/infra/cuda_check.h"
#include "exec/backends/cuda/comm/device_comm.h"
#include "exec/backends/cuda/comm/nccl_comm.h"
#include "exec/backends/cuda/comm/virtual_ranks.h"
#include "tests/gpu/gpu_check.h"

using tandem::idx;

namespace {

using namespace std::chrono_literals;
namespace comm = tandem::comm;
namespace cu = tandem::cuda;
using cu::DeviceBuffer;
using tandem::gputest::expect;
using tandem::gputest::same_bits;
using tandem::gputest::to_host;

constexpr int kRanks = 4;

comm::CommOptions with_timeout(std::chrono::milliseconds t) {
  comm::CommOptions o;
  o.timeout = t;
  return o;
}

struct Stream {
  cudaStream_t s = nullptr;
  Stream() { cu::check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreateWithFlags"); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (s) cudaStreamDestroy(s);
  }
  void sync() const { cu::check(cudaStreamSynchronize(s), "cudaStreamSynchronize"); }
};

// A rank thread's findings (expect() is not thread-safe: the main thread reports them).
struct RankLog {
  std::vector<std::string> failures;
  void want(bool ok, const std::string& what) {
    if (!ok) failures.push_back(what);
  }
};

// Runs body(rank, log) on one thread per rank, then reports every rank's failures and exceptions.
void on_ranks(int n, const std::string& what, const std::function<void(int, RankLog&)>& body) {
  std::vector<RankLog> logs(idx(n));
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      RankLog& log = logs[idx(r)];
      try {
        body(r, log);
      } catch (const std::exception& e) {
        log.failures.push_back(std::string("exception: ") + e.what());
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < n; ++r) {
    for (const std::string& f : logs[idx(r)].failures) {
      expect(false, what + ": rank " + std::to_string(r) + ": " + f);
    }
  }
}

std::vector<uint8_t> pattern(std::size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    v[i] = static_cast<uint8_t>(x >> 56);
  }
  return v;
}

// Gradient-like FP32 data over 7 decades, so the order of a sum changes its rounding.
std::vector<float> grad_data(std::size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> n01(0.0f, 1.0f);
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = n01(rng) * std::pow(10.0f, static_cast<float>(i % 7) - 3.0f);
  return v;
}

// `v` on the device, written on `stream`: ordered before the calls that read it there. (cudaMemcpy
// runs on the default stream, which the non-blocking streams used here do not wait for; a pageable
// source is staged before cudaMemcpyAsync returns, so `v` may go at once.)
template <class T>
DeviceBuffer<T> upload(const std::vector<T>& v, cudaStream_t stream) {
  DeviceBuffer<T> d(v.size());
  if (!v.empty()) {
    cu::check(cudaMemcpyAsync(d.get(), v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice, stream), "upload");
  }
  return d;
}

std::vector<std::size_t> offsets_of(const std::vector<std::size_t>& sizes) { return cu::prefix_offsets(sizes); }

// ------------------------------------------------------------------------ virtual ranks

void check_pp_ring(cu::VirtualRankWorld& world) {
  on_ranks(kRanks, "pp ring", [&](int r, RankLog& log) {
    cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
    cu::DeviceCommunicator& c = world.comm(r);
    Stream st;
    const int next = (r + 1) % kRanks;
    const int prev = (r + kRanks - 1) % kRanks;
    struct Msg {
      int tag;
      int k;  // k-th message with this tag
    };
    const std::vector<Msg> sends = {{0, 0}, {1, 0}, {2, 0}, {5, 0}, {5, 1}};
    auto bytes_of = [](int from, Msg m) -> std::size_t {
      return 1000 + 37 * idx(m.tag) + 101 * idx(from) + 13 * m.k;
    };
    auto seed_of = [](int from, Msg m) -> uint64_t { return static_cast<uint64_t>(from * 1000 + m.tag * 10 + m.k); };
    // One send buffer for all: refilled and then scribbled over on the stream right after each send,
    // which the send's contract allows (the payload was copied at the send, stream-ordered).
    std::vector<std::vector<uint8_t>> host_payloads;
    for (const Msg& m : sends) host_payloads.push_back(pattern(bytes_of(r, m), seed_of(r, m)));
    DeviceBuffer<uint8_t> buf(4096);
    for (std::size_t i = 0; i < sends.size(); ++i) {
      const std::vector<uint8_t>& p = host_payloads[i];
      cu::check(cudaMemcpyAsync(buf.get(), p.data(), p.size(), cudaMemcpyHostToDevice, st.s), "upload payload");
      c.send(next, sends[i].tag, buf.get(), p.size(), "pp_send tag " + std::to_string(sends[i].tag), st.s);
      cu::check(cudaMemsetAsync(buf.get(), 0xEE, buf.bytes(), st.s), "scribble");
    }
    c.send(next, 7, nullptr, 0, "pp_send empty", st.s);
    // Receive by tag in another order than sent; tag 5 in FIFO order.
    const std::vector<Msg> recvs = {{2, 0}, {1, 0}, {5, 0}, {0, 0}, {5, 1}};
    std::vector<DeviceBuffer<uint8_t>> got;
    for (const Msg& m : recvs) {
      got.emplace_back(bytes_of(prev, m));
      c.recv(prev, m.tag, got.back().get(), got.back().size(), "pp_recv tag " + std::to_string(m.tag), st.s);
    }
    c.recv(prev, 7, nullptr, 0, "pp_recv empty", st.s);
    st.sync();  // host_payloads must outlive the async uploads
    for (std::size_t i = 0; i < recvs.size(); ++i) {
      log.want(to_host(got[i]) == pattern(bytes_of(prev, recvs[i]), seed_of(prev, recvs[i])),
               "message tag " + std::to_string(recvs[i].tag) + " #" + std::to_string(recvs[i].k) + " from rank " +
                   std::to_string(prev));
    }
  });
}

void check_all_to_all(cu::VirtualRankWorld& world) {
  // Bytes from world rank s to world rank d: zeros on and off the diagonal, rank 1 sends nothing.
  const std::size_t sizes[kRanks][kRanks] = {
      {40, 68, 0, 4}, {0, 0, 0, 0}, {1000, 12, 120, 0}, {0, 8, 4096, 160}};
  const std::vector<int> group = {2, 0, 3, 1};  // results in this order
  on_ranks(kRanks, "all_to_all_v", [&](int r, RankLog& log) {
    cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
    cu::DeviceCommunicator& c = world.comm(r);
    Stream st;
    const std::size_t n = group.size();
    std::vector<std::size_t> send_sizes(n), recv_sizes(n);
    for (std::size_t i = 0; i < n; ++i) send_sizes[i] = sizes[r][group[i]];
    c.all_to_all_counts(group, send_sizes, recv_sizes, "dispatch counts");
    for (std::size_t i = 0; i < n; ++i) {
      log.want(recv_sizes[i] == sizes[group[i]][r], "all_to_all_counts from rank " + std::to_string(group[i]));
    }
    const std::vector<std::size_t> so = offsets_of(send_sizes);
    const std::vector<std::size_t> ro = offsets_of(recv_sizes);
    std::vector<uint8_t> host_send(so[n]);
    for (std::size_t i = 0; i < n; ++i) {
      const std::vector<uint8_t> p = pattern(send_sizes[i], static_cast<uint64_t>(r * 100 + group[i]));
      std::copy(p.begin(), p.end(), host_send.begin() + static_cast<std::ptrdiff_t>(so[i]));
    }
    auto d_send = upload(host_send, st.s);
    DeviceBuffer<uint8_t> d_recv(ro[n]);
    std::vector<comm::ConstBytes> sb(n);
    std::vector<comm::MutableBytes> rb(n);
    for (std::size_t i = 0; i < n; ++i) {
      sb[i] = {d_send.get() + so[i], send_sizes[i]};
      rb[i] = {d_recv.get() + ro[i], recv_sizes[i]};
    }
    c.all_to_all_v(group, sb, rb, "dispatch_f layer 1", st.s);
    st.sync();
    const std::vector<uint8_t> got = to_host(d_recv);
    for (std::size_t i = 0; i < n; ++i) {
      const std::vector<uint8_t> want = pattern(recv_sizes[i], static_cast<uint64_t>(group[i] * 100 + r));
      log.want(std::equal(want.begin(), want.end(), got.begin() + static_cast<std::ptrdiff_t>(ro[i])),
               "all_to_all_v bytes from rank " + std::to_string(group[i]));
    }
  });
}

// Host in-process world's reduce_scatter_sum on the same inputs: the reference, bit for bit.
std::vector<std::vector<float>> host_reduce_scatter(const std::vector<int>& group,
                                                    const std::vector<std::vector<float>>& inputs,
                                                    const std::vector<std::size_t>& counts) {
  comm::InProcessWorld host(kRanks);
  std::vector<std::vector<float>> out(kRanks);
  std::vector<std::thread> threads;
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      const std::size_t self = idx(std::find(group.begin(), group.end(), r) - group.begin());
      std::vector<float>& o = out[idx(r)];
      o.assign(counts[self], 0.0f);
      host.comm(r).reduce_scatter_sum(group, inputs[idx(r)].data(), o.data(), counts,
                                      "host reduce_scatter");
    });
  }
  for (std::thread& t : threads) t.join();
  return out;
}

void check_reduce_scatter(cu::VirtualRankWorld& world) {
  struct Case {
    std::vector<int> group;
    std::vector<std::size_t> counts;  // per member
    bool in_place;
  };
  const std::vector<Case> cases = {{{0, 1, 2, 3}, {5, 0, 1031, 300}, false}, {{3, 1, 0, 2}, {7, 1031, 0, 64}, true}};
  for (const Case& cs : cases) {
    const std::string what = std::string("reduce_scatter_sum") + (cs.in_place ? " in place" : "") + " group " +
                             cu::group_text(cs.group);
    const std::vector<std::size_t> off = offsets_of(cs.counts);
    std::vector<std::vector<float>> inputs;
    for (int r = 0; r < kRanks; ++r) {
      std::vector<float> in = grad_data(off.back(), static_cast<uint32_t>(1234 + r));
      // Element 0 of every block: 1e8 + 1 - 1e8 + 1 in group order is 1, in reverse order 0.
      const std::size_t member = idx(std::find(cs.group.begin(), cs.group.end(), r) - cs.group.begin());
      const float order_sensitive[kRanks] = {1e8f, 1.0f, -1e8f, 1.0f};
      for (std::size_t b = 0; b < cs.counts.size(); ++b) {
        if (cs.counts[b]) in[off[b]] = order_sensitive[member];
      }
      inputs.push_back(std::move(in));
    }
    const std::vector<std::vector<float>> want = host_reduce_scatter(cs.group, inputs, cs.counts);
    on_ranks(kRanks, what, [&](int r, RankLog& log) {
      cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
      cu::DeviceCommunicator& c = world.comm(r);
      Stream st;
      const std::size_t self = idx(std::find(cs.group.begin(), cs.group.end(), r) - cs.group.begin());
      auto d_in = upload(inputs[idx(r)], st.s);
      DeviceBuffer<float> d_out(cs.counts[self]);
      float* out = cs.in_place ? d_in.get() + off[self] : d_out.get();
      c.reduce_scatter_sum(cs.group, d_in.get(), out, cs.counts, "dp_reduce_scatter", st.s);
      st.sync();
      std::vector<float> got(cs.counts[self]);
      if (!got.empty()) {
        cu::check(cudaMemcpy(got.data(), out, got.size() * sizeof(float), cudaMemcpyDeviceToHost), "download");
      }
      log.want(same_bits(got, want[idx(r)]), "bit-identical to the host in-process world");
      if (!got.empty()) log.want(got[0] == 1.0f, "group order (1e8 + 1 - 1e8 + 1 = 1), got " + std::to_string(got[0]));
    });
  }
}

void check_all_gather(cu::VirtualRankWorld& world) {
  const std::vector<int> group = {0, 1, 2, 3};
  const std::vector<std::size_t> bytes = {12, 0, 1001, 64};
  const std::vector<std::size_t> off = offsets_of(bytes);
  std::vector<uint8_t> want(off.back());
  for (std::size_t i = 0; i < group.size(); ++i) {
    const std::vector<uint8_t> p = pattern(bytes[i], static_cast<uint64_t>(500 + group[i]));
    std::copy(p.begin(), p.end(), want.begin() + static_cast<std::ptrdiff_t>(off[i]));
  }
  on_ranks(kRanks, "all_gather_v", [&](int r, RankLog& log) {
    cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
    cu::DeviceCommunicator& c = world.comm(r);
    Stream st;
    const std::size_t self = idx(r);
    auto d_in = upload(pattern(bytes[self], static_cast<uint64_t>(500 + r)), st.s);
    DeviceBuffer<uint8_t> d_out(off.back());
    c.all_gather_v(group, d_in.get(), d_out.get(), bytes, "dp_all_gather", st.s);
    st.sync();
    log.want(to_host(d_out) == want, "all_gather_v");
    // In place: the own contribution already sits in its slot.
    DeviceBuffer<uint8_t> d_place(off.back());
    cu::check(cudaMemsetAsync(d_place.get(), 0, d_place.bytes(), st.s), "cudaMemsetAsync");
    if (bytes[self]) {
      cu::check(cudaMemcpyAsync(d_place.get() + off[self], d_in.get(), bytes[self], cudaMemcpyDeviceToDevice, st.s),
                "copy");
    }
    c.all_gather_v(group, d_place.get() + off[self], d_place.get(), bytes, "dp_all_gather in place", st.s);
    st.sync();
    log.want(to_host(d_place) == want, "all_gather_v in place");
    // Equal contributions.
    auto d_eq = upload(pattern(256, static_cast<uint64_t>(900 + r)), st.s);
    DeviceBuffer<uint8_t> d_all(256 * group.size());
    c.all_gather(group, d_eq.get(), 256, d_all.get(), "all_gather", st.s);
    st.sync();
    const std::vector<uint8_t> all = to_host(d_all);
    for (std::size_t i = 0; i < group.size(); ++i) {
      const std::vector<uint8_t> p = pattern(256, static_cast<uint64_t>(900 + group[i]));
      log.want(std::equal(p.begin(), p.end(), all.begin() + static_cast<std::ptrdiff_t>(256 * i)),
               "all_gather slot " + std::to_string(i));
    }
  });
}

void CUDART_CB sleep_100ms(void*) { std::this_thread::sleep_for(100ms); }

void check_sub_groups(cu::VirtualRankWorld& world) {
  // Ranks 1 and 3 work on the group {3,1}; ranks 0 and 2 check the barrier's stream ordering.
  DeviceBuffer<uint8_t> flag(64);
  cu::check(cudaMemset(flag.get(), 0, 64), "cudaMemset");
  cu::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");  // the ranks' streams do not wait for it
  const std::vector<int> pair = {3, 1};
  const std::vector<std::size_t> counts = {100, 77};
  std::vector<std::vector<float>> inputs(kRanks);
  for (int r : pair) inputs[idx(r)] = grad_data(177, static_cast<uint32_t>(77 + r));
  on_ranks(kRanks, "sub-groups", [&](int r, RankLog& log) {
    cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
    cu::DeviceCommunicator& c = world.comm(r);
    Stream st;
    if (r == 1 || r == 3) {
      const std::size_t self = r == 3 ? 0 : 1;
      const std::vector<float>& in = inputs[idx(r)];
      auto d_in = upload(in, st.s);
      DeviceBuffer<float> d_out(counts[self]);
      c.reduce_scatter_sum(pair, d_in.get(), d_out.get(), counts, "dp_rs {3,1}", st.s);
      // The contract's loop, member 0 (rank 3) first.
      const std::size_t at = self == 0 ? 0 : counts[0];
      std::vector<float> want(counts[self]);
      for (std::size_t k = 0; k < want.size(); ++k) {
        float acc = inputs[3][at + k];
        acc += inputs[1][at + k];
        want[k] = acc;
      }
      const std::vector<std::size_t> bytes = {5, 9};
      auto d_mine = upload(pattern(bytes[self], static_cast<uint64_t>(40 + r)), st.s);
      DeviceBuffer<uint8_t> d_all(14);
      c.all_gather_v(pair, d_mine.get(), d_all.get(), bytes, "dp_ag {3,1}", st.s);
      c.barrier(pair, "barrier {3,1}", st.s);
      st.sync();
      log.want(same_bits(to_host(d_out), want), "reduce_scatter_sum on {3,1} in group order");
      std::vector<uint8_t> want_all = pattern(5, 43);
      const std::vector<uint8_t> second = pattern(9, 41);
      want_all.insert(want_all.end(), second.begin(), second.end());
      log.want(to_host(d_all) == want_all, "all_gather_v on {3,1}");
    } else {
      const std::vector<int> evens = {0, 2};
      if (r == 0) {
        // Slow work before the barrier on rank 0's stream; rank 2 reads its result after the barrier.
        cu::check(cudaLaunchHostFunc(st.s, sleep_100ms, nullptr), "cudaLaunchHostFunc");
        cu::check(cudaMemsetAsync(flag.get(), 0xAB, 64, st.s), "cudaMemsetAsync");
        c.barrier(evens, "barrier {0,2}", st.s);
        auto msg = upload(pattern(333, 11), st.s);
        c.send(2, 11, msg.get(), 333, "pp_send 0->2", st.s);
        st.sync();
      } else {
        c.barrier(evens, "barrier {0,2}", st.s);
        DeviceBuffer<uint8_t> seen(64);
        cu::check(cudaMemcpyAsync(seen.get(), flag.get(), 64, cudaMemcpyDeviceToDevice, st.s), "copy flag");
        DeviceBuffer<uint8_t> msg(333);
        c.recv(0, 11, msg.get(), 333, "pp_recv 0->2", st.s);
        st.sync();
        log.want(to_host(seen) == std::vector<uint8_t>(64, 0xAB), "work after the barrier sees rank 0's work before it");
        log.want(to_host(msg) == pattern(333, 11), "send 0->2 beside the sub-group");
      }
    }
  });
}

void check_back_to_back(cu::VirtualRankWorld& world) {
  constexpr int kMessages = 256;
  constexpr std::size_t kBytes = std::size_t{1} << 20;
  cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
  DeviceBuffer<uint8_t> send_buf(kBytes);
  DeviceBuffer<uint8_t> recv_all(kBytes * kMessages);
  Stream s0, s1;
  cu::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  world.trim();
  std::size_t free_before = 0, free_after = 0, total = 0;
  cu::check(cudaMemGetInfo(&free_before, &total), "cudaMemGetInfo");
  std::vector<std::string> failures[2];  // one list per thread
  std::thread sender([&] {
    try {
      cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
      for (int i = 0; i < kMessages; ++i) {
        cu::check(cudaMemsetAsync(send_buf.get(), i & 0xff, kBytes, s0.s), "fill");
        world.comm(0).send(1, 100, send_buf.get(), kBytes, "pp_send burst", s0.s);
      }
      s0.sync();
    } catch (const std::exception& e) {
      failures[0].push_back(std::string("sender: ") + e.what());
    }
  });
  std::thread receiver([&] {
    try {
      cu::check(cudaSetDevice(world.device()), "cudaSetDevice");
      for (int i = 0; i < kMessages; ++i) {
        world.comm(1).recv(0, 100, recv_all.get() + idx(i) * kBytes, kBytes, "pp_recv burst",
                           s1.s);
      }
      s1.sync();
    } catch (const std::exception& e) {
      failures[1].push_back(std::string("receiver: ") + e.what());
    }
  });
  sender.join();
  receiver.join();
  for (const auto& list : failures) {
    for (const std::string& f : list) expect(false, "back-to-back sends: " + f);
  }
  cu::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  const std::vector<uint8_t> got = to_host(recv_all);
  int wrong = 0;
  for (int i = 0; i < kMessages; ++i) {
    const std::size_t at = idx(i) * kBytes;
    const auto v = static_cast<uint8_t>(i & 0xff);
    if (got[at] != v || got[at + kBytes / 2] != v || got[at + kBytes - 1] != v) ++wrong;
  }
  expect(wrong == 0, "back-to-back sends: " + std::to_string(wrong) + " of 256 messages hold other bytes");
  const std::size_t reserved_peak = world.staging_bytes_reserved();
  expect(world.staging_bytes_in_use() == 0,
         "back-to-back sends: staging in use afterwards: " + std::to_string(world.staging_bytes_in_use()) + " bytes");
  expect(world.parcels_in_flight() == 0, "back-to-back sends: parcels left in flight");
  world.trim();
  cu::check(cudaMemGetInfo(&free_after, &total), "cudaMemGetInfo");
  std::printf("back-to-back: 256 x 1 MiB, staging pool held %.1f MiB before trim, %.1f MiB after; device free "
              "%.1f -> %.1f MiB\n",
              reserved_peak / 1048576.0, world.staging_bytes_reserved() / 1048576.0, free_before / 1048576.0,
              free_after / 1048576.0);
  const double lost_mib = (static_cast<double>(free_before) - static_cast<double>(free_after)) / 1048576.0;
  expect(lost_mib <= 16.0, "back-to-back sends: device memory not returned (" + std::to_string(lost_mib) +
                               " MiB less free than before)");
}

// A recv on rank 0 from `peer` that nobody sends, in a world with a short timeout: it must throw
// a CommError of kind timeout naming rank 0, `label` and the peer, within 5 s.
void expect_recv_timeout(cu::DeviceCommunicator& c, int peer, const std::string& what, cudaStream_t stream) {
  const std::string label = "pp_recv never sent";
  DeviceBuffer<float> buf(4);
  const auto t0 = std::chrono::steady_clock::now();
  bool threw = false;
  try {
    c.recv(peer, 99, buf.get(), buf.bytes(), label, stream);
  } catch (const comm::CommError& e) {
    threw = true;
    const std::string text = e.what();
    std::printf("%s: %s\n", what.c_str(), e.what());
    expect(e.kind() == comm::CommErrorKind::timeout, what + ": kind " + std::string(comm::to_string(e.kind())));
    expect(e.rank() == 0 && e.label() == label, what + ": rank and label: " + text);
    expect(text.find("rank 0") != std::string::npos && text.find(label) != std::string::npos &&
               text.find("rank " + std::to_string(peer)) != std::string::npos,
           what + ": message names rank, label and peer: " + text);
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  expect(threw, what + ": the recv returned");
  expect(s < 5.0, what + ": took " + std::to_string(s) + " s");
}

void check_failures(int device) {
  Stream st;
  {  // A recv nobody sends: a timeout naming rank, label and peer, then the world is failed.
    cu::VirtualRankWorld w(2, device, with_timeout(200ms));
    expect_recv_timeout(w.comm(0), 1, "timeout", st.s);
    try {
      const std::vector<int> both = {0, 1};
      w.comm(1).barrier(both, "after the timeout", st.s);
      expect(false, "timeout: the world did not fail");
    } catch (const comm::CommError& e) {
      expect(e.kind() == comm::CommErrorKind::peer_failed && e.first_failed_rank() == 0,
             std::string("timeout: rank 1 fails naming rank 0: ") + e.what());
    }
    expect(w.failure().has_value() && w.failure()->rank == 0, "timeout: world failure names rank 0");
  }
  {  // A size mismatch: kind mismatch, and the parcel is released.
    cu::VirtualRankWorld w(2, device, with_timeout(2s));
    DeviceBuffer<uint8_t> buf(16);
    w.comm(0).send(1, 1, buf.get(), 16, "pp_send 16", st.s);
    try {
      w.comm(1).recv(0, 1, buf.get(), 8, "pp_recv 8", st.s);
      expect(false, "mismatch: no error");
    } catch (const comm::CommError& e) {
      expect(e.kind() == comm::CommErrorKind::mismatch, std::string("mismatch: ") + e.what());
    }
    st.sync();
    expect(w.parcels_in_flight() == 0, "mismatch: parcel released");
  }
  {  // Never received: listed by undelivered(), its staging released.
    cu::VirtualRankWorld w(2, device, with_timeout(2s));
    DeviceBuffer<uint8_t> buf(std::size_t{1} << 20);
    w.comm(0).send(1, 3, buf.get(), buf.size(), "pp_send lost", st.s);
    expect(w.parcels_in_flight() == 1, "undelivered: one parcel in flight");
    const std::vector<std::string> lines = w.undelivered();
    expect(lines.size() == 1 && lines[0].find("pp_send lost") != std::string::npos, "undelivered: listed");
    st.sync();
    expect(w.parcels_in_flight() == 0 && w.staging_bytes_in_use() == 0, "undelivered: staging released");
  }
}

void check_virtual_ranks() {
  const int device = 0;
  cu::VirtualRankWorld world(kRanks, device, with_timeout(30s));
  std::printf("%s\n", world.describe().c_str());
  check_pp_ring(world);
  check_all_to_all(world);
  check_reduce_scatter(world);
  check_all_gather(world);
  check_sub_groups(world);
  cu::check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  expect(world.undelivered().empty(), "virtual ranks: undelivered messages");
  expect(world.parcels_in_flight() == 0, "virtual ranks: parcels in flight after the checks");
  expect(!world.failure().has_value(), "virtual ranks: the world failed");
  check_back_to_back(world);
  check_failures(device);
}

// ------------------------------------------------------------------------------- NCCL

#if TANDEM_HAVE_NCCL
void check_nccl_comm() {
  std::printf("NCCL %d\n", cu::nccl_version());
  {
    cu::NcclLocalWorld world({}, with_timeout(30s));
    const int n = world.size();
    std::printf("%s\n", world.describe().c_str());
    std::vector<int> all(idx(n));
    for (int i = 0; i < n; ++i) all[idx(i)] = i;
    on_ranks(n, "nccl", [&](int r, RankLog& log) {
      cu::NcclCommunicator& c = world.comm(r);
      cu::check(cudaSetDevice(c.device()), "cudaSetDevice");
      Stream st;
      // --- send / recv: pairs (2k, 2k+1), lower sends first; a rank without partner sends to itself.
      const int partner = (r % 2 == 0) ? (r + 1 < n ? r + 1 : r) : r - 1;
      const std::vector<uint8_t> a = pattern(1000 + 3 * r, static_cast<uint64_t>(r * 10 + 3));
      const std::vector<uint8_t> b = pattern(77, static_cast<uint64_t>(r * 10 + 4));
      auto da = upload(a, st.s);
      auto db = upload(b, st.s);
      DeviceBuffer<uint8_t> ra(1000 + 3 * partner), rb(77);
      if (partner == r) {
        c.send(r, 3, da.get(), a.size(), "self tag 3", st.s);
        c.send(r, 4, db.get(), b.size(), "self tag 4", st.s);
        c.recv(r, 4, rb.get(), 77, "self tag 4", st.s);  // by tag, not in order: the staged self path
        c.recv(r, 3, ra.get(), ra.size(), "self tag 3", st.s);
      } else if (r < partner) {
        c.send(partner, 3, da.get(), a.size(), "pp_send 3", st.s);
        c.send(partner, 4, db.get(), b.size(), "pp_send 4", st.s);
        c.recv(partner, 3, ra.get(), ra.size(), "pp_recv 3", st.s);
        c.recv(partner, 4, rb.get(), 77, "pp_recv 4", st.s);
      } else {
        c.recv(partner, 3, ra.get(), ra.size(), "pp_recv 3", st.s);
        c.recv(partner, 4, rb.get(), 77, "pp_recv 4", st.s);
        c.send(partner, 3, da.get(), a.size(), "pp_send 3", st.s);
        c.send(partner, 4, db.get(), b.size(), "pp_send 4", st.s);
      }
      st.sync();
      log.want(to_host(ra) == pattern(1000 + 3 * partner, static_cast<uint64_t>(partner * 10 + 3)), "send/recv tag 3");
      log.want(to_host(rb) == pattern(77, static_cast<uint64_t>(partner * 10 + 4)), "send/recv tag 4");

      // --- all_to_all_v over the world: member d gets 16*(r+1) + 4*d bytes, except r == d+1 gets none.
      auto a2a_bytes = [](int s, int d) -> std::size_t { return s == d + 1 ? 0 : 16 * idx(s + 1) + 4 * d; };
      std::vector<std::size_t> ss(idx(n)), rs(idx(n));
      for (int d = 0; d < n; ++d) ss[idx(d)] = a2a_bytes(r, d);
      c.all_to_all_counts(all, ss, rs, "counts");
      const std::vector<std::size_t> so = offsets_of(ss), ro = offsets_of(rs);
      std::vector<uint8_t> hs(so.back());
      for (int d = 0; d < n; ++d) {
        const std::vector<uint8_t> p = pattern(ss[idx(d)], static_cast<uint64_t>(r * 100 + d));
        std::copy(p.begin(), p.end(), hs.begin() + static_cast<std::ptrdiff_t>(so[idx(d)]));
      }
      auto ds = upload(hs, st.s);
      DeviceBuffer<uint8_t> dr(ro.back());
      std::vector<comm::ConstBytes> sb(idx(n));
      std::vector<comm::MutableBytes> rbuf(idx(n));
      for (std::size_t i = 0; i < sb.size(); ++i) {
        sb[i] = {ds.get() + so[i], ss[i]};
        rbuf[i] = {dr.get() + ro[i], rs[i]};
      }
      c.all_to_all_v(all, sb, rbuf, "dispatch", st.s);
      st.sync();
      const std::vector<uint8_t> got = to_host(dr);
      for (int s = 0; s < n; ++s) {
        const std::vector<uint8_t> p = pattern(a2a_bytes(s, r), static_cast<uint64_t>(s * 100 + r));
        log.want(rs[idx(s)] == p.size() &&
                     std::equal(p.begin(), p.end(), got.begin() + static_cast<std::ptrdiff_t>(ro[idx(s)])),
                 "all_to_all_v from rank " + std::to_string(s));
      }

      // --- reduce_scatter_sum: equal counts on the world, unequal on the reversed world.
      std::vector<int> reversed(all.rbegin(), all.rend());
      for (int pass = 0; pass < 2; ++pass) {
        const std::vector<int>& group = pass == 0 ? all : reversed;
        std::vector<std::size_t> counts(idx(n));
        for (int i = 0; i < n; ++i) counts[idx(i)] = pass == 0 ? 256 : 100 + 37 * idx(i);
        const std::vector<std::size_t> off = offsets_of(counts);
        const std::size_t self = idx(std::find(group.begin(), group.end(), r) - group.begin());
        std::vector<std::vector<float>> ins;
        for (int m = 0; m < n; ++m) ins.push_back(grad_data(off.back(), static_cast<uint32_t>(pass * 1000 + group[idx(m)])));
        const std::vector<float>& mine = ins[self];
        auto d_in = upload(mine, st.s);
        DeviceBuffer<float> d_out(counts[self]);
        c.reduce_scatter_sum(group, d_in.get(), d_out.get(), counts, pass == 0 ? "rs equal" : "rs padded", st.s);
        st.sync();
        const std::vector<float> out = to_host(d_out);
        // Group-order reference; NCCL's own order stays within 2 (n-1) 2^-24 sum|x| per element
        // (nccl_comm.h). One rank: a copy, bit-identical.
        std::vector<float> ref(counts[self]);
        bool within = true;
        for (std::size_t k = 0; k < counts[self]; ++k) {
          float acc = ins[0][off[self] + k];
          double mag = std::fabs(acc);
          for (int m = 1; m < n; ++m) {
            acc += ins[idx(m)][off[self] + k];
            mag += std::fabs(ins[idx(m)][off[self] + k]);
          }
          ref[k] = acc;
          const double bound = 2.0 * (n - 1) * std::ldexp(1.0, -24) * mag;
          if (!(std::fabs(static_cast<double>(out[k]) - acc) <= bound)) within = false;
        }
        const std::string name = std::string("reduce_scatter_sum ") + (pass == 0 ? "equal counts" : "unequal (padded), reversed group");
        log.want(within, name + ": beyond NCCL's order bound");
        if (n == 1) log.want(same_bits(out, ref), name + ": one rank is not a bit-exact copy");
        if (n == 2 && !same_bits(out, ref)) std::printf("NOTE: %s on 2 ranks is not bit-identical to group order\n", name.c_str());
      }

      // --- all_gather_v: unequal, then equal in place.
      std::vector<std::size_t> gb(idx(n));
      for (int i = 0; i < n; ++i) gb[idx(i)] = 10 + 3 * idx(i);
      const std::vector<std::size_t> goff = offsets_of(gb);
      auto d_mine = upload(pattern(gb[idx(r)], static_cast<uint64_t>(700 + r)), st.s);
      DeviceBuffer<uint8_t> d_all(goff.back());
      c.all_gather_v(all, d_mine.get(), d_all.get(), gb, "ag unequal", st.s);
      const std::size_t eq = 512;
      DeviceBuffer<uint8_t> d_eq(eq * idx(n));
      const std::vector<uint8_t> own = pattern(eq, static_cast<uint64_t>(800 + r));
      cu::check(cudaMemcpyAsync(d_eq.get() + eq * idx(r), own.data(), eq, cudaMemcpyHostToDevice,
                                st.s),
                "upload");
      c.all_gather(all, d_eq.get() + eq * idx(r), eq, d_eq.get(), "ag equal in place", st.s);
      c.barrier(all, "barrier", st.s);
      st.sync();
      const std::vector<uint8_t> gall = to_host(d_all), geq = to_host(d_eq);
      for (int s = 0; s < n; ++s) {
        const std::vector<uint8_t> p = pattern(gb[idx(s)], static_cast<uint64_t>(700 + s));
        const std::vector<uint8_t> q = pattern(eq, static_cast<uint64_t>(800 + s));
        log.want(std::equal(p.begin(), p.end(), gall.begin() + static_cast<std::ptrdiff_t>(goff[idx(s)])),
                 "all_gather_v slot " + std::to_string(s));
        log.want(std::equal(q.begin(), q.end(), geq.begin() + static_cast<std::ptrdiff_t>(eq * idx(s))),
                 "all_gather in place slot " + std::to_string(s));
      }

      // --- a singleton sub-group: its own NCCL communicator of one rank.
      const std::vector<int> me = {r};
      const std::vector<std::size_t> one = {300};
      const std::vector<float> x = grad_data(300, static_cast<uint32_t>(900 + r));
      auto d_x = upload(x, st.s);
      DeviceBuffer<float> d_y(300);
      c.reduce_scatter_sum(me, d_x.get(), d_y.get(), one, "rs singleton", st.s);
      c.barrier(me, "barrier singleton", st.s);
      st.sync();
      log.want(same_bits(to_host(d_y), x), "reduce_scatter_sum on a singleton group = identity");
    });
  }
  {  // A recv nobody sends (to self): a timeout naming rank and label; the world's NCCL is aborted.
    cu::NcclLocalWorld w({0}, with_timeout(200ms));
    cu::check(cudaSetDevice(0), "cudaSetDevice");
    Stream st;
    expect_recv_timeout(w.comm(0), 0, "nccl timeout", st.s);
  }
}
#endif

}  // namespace

TANDEM_GPU_CHECK(virtual_ranks) { check_virtual_ranks(); }

TANDEM_GPU_CHECK(nccl_comm) {
#if TANDEM_HAVE_NCCL
  check_nccl_comm();
#else
  tandem::gputest::skip("built without NCCL");
#endif
}
