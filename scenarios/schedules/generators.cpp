#include "scenarios/schedules/generators.h"

#include <algorithm>

#include "common/signed_index.h"

namespace tandem {

namespace {

// Appends slots to one rank's list; each returns the new slot's index.
class RankBuilder {
 public:
  explicit RankBuilder(std::vector<Slot>& slots) : slots_(slots) {}

  int forward(int phase, bool send = true) {
    Slot s;
    s.kind = SlotKind::F;
    s.f.phase = phase;
    return push(s, send, false);
  }
  int backward(int phase, bool defer_weights, bool send = true) {
    Slot s;
    s.kind = defer_weights ? SlotKind::B_input : SlotKind::B;
    s.b.phase = phase;
    return push(s, false, send);
  }
  int weight() {
    Slot s;
    s.kind = SlotKind::W;
    return push(s, false, false);
  }
  int forward_backward(int f_phase, int b_phase) {
    Slot s;
    s.kind = SlotKind::FB;
    s.f.phase = f_phase;
    s.b.phase = b_phase;
    return push(s, true, true);
  }
  // A held-back forward output is sent at the end of the slot that comes last so far.
  void send_forward_of(int slot) { slots_[idx(slot)].f_release = last(); }
  int last() const { return static_cast<int>(slots_.size()) - 1; }

 private:
  int push(Slot s, bool send_f, bool send_b) {
    const int i = static_cast<int>(slots_.size());
    s.f_release = send_f ? i : -1;
    s.b_release = send_b ? i : -1;
    slots_.push_back(s);
    return i;
  }
  std::vector<Slot>& slots_;
};

}  // namespace

std::vector<std::vector<Slot>> generate_1f1b(int p, int m) {
  std::vector<std::vector<Slot>> out(idx(p));
  for (int r = 0; r < p; ++r) {
    RankBuilder b(out[idx(r)]);
    const int warmup = std::min(p - r - 1, m);
    for (int i = 0; i < warmup; ++i) b.forward(0);
    for (int i = 0; i < m - warmup; ++i) {
      b.forward(0);
      b.backward(0, false);
    }
    for (int i = 0; i < warmup; ++i) b.backward(0, false);
  }
  return out;
}

std::vector<std::vector<Slot>> generate_zb1p(int p, int m) {
  std::vector<std::vector<Slot>> out(idx(p));
  for (int r = 0; r < p; ++r) {
    RankBuilder b(out[idx(r)]);
    const int warmup = std::min(p - r - 1, m);
    int pending = 0;
    for (int i = 0; i < warmup; ++i) b.forward(0);
    for (int i = 0; i < m - warmup; ++i) {
      b.forward(0);
      b.backward(0, true);
      if (++pending > r) {
        b.weight();
        --pending;
      }
    }
    for (int i = 0; i < warmup; ++i) {
      b.backward(0, true);
      ++pending;
      b.weight();
      --pending;
    }
    for (; pending > 0; --pending) b.weight();
  }
  return out;
}

std::vector<std::vector<Slot>> generate_dualpipe(int N, int M) {
  std::vector<std::vector<Slot>> out(idx(N));
  const int H = N / 2;
  for (int r = 0; r < N; ++r) {
    RankBuilder b(out[idx(r)]);
    const int h = std::min(r, N - 1 - r);
    const bool middle = h == H - 1;

    // Step 1 "nF0": fill the early-stage pipeline.
    for (int i = 0; i < 2 * (H - h - 1); ++i) b.forward(0);

    // Step 2 "nF0F1": alternate phases. Middle ranks send each F0 at once (their partner needs
    // it for its F1) and hold back the last F1; the others send each F0 after the next F1.
    int held_f1 = -1;
    for (int i = 0; i < h + 1; ++i) {
      const int f0 = b.forward(0, middle);
      const bool send_f1 = !middle || i < h;
      const int f1 = b.forward(1, send_f1);
      if (!middle) b.send_forward_of(f0);
      if (!send_f1) held_f1 = f1;
    }

    // Step 3 "nB1W1F1": zero-bubble backward of phase 1, a weight pass, a forward of phase 1.
    for (int i = 0; i < H - h - 1; ++i) {
      b.backward(1, true);
      b.weight();
      b.forward(1);
    }

    // Step 4 (main) "nF0B1F1B0": two overlapped slots per repeat. The middle ranks' first
    // repeat does not overlap F0 and B1, to shrink the bubble further.
    for (int i = 0; i < M - N + h + 1; ++i) {
      if (i == 0 && middle) {
        const int f0 = b.forward(0, false);
        if (held_f1 >= 0) b.send_forward_of(held_f1);
        b.backward(1, false);
        b.send_forward_of(f0);
      } else {
        b.forward_backward(0, 1);
      }
      b.forward_backward(1, 0);
    }

    // Step 5 "nB1F1B0".
    for (int i = 0; i < H - h - 1; ++i) {
      b.backward(1, false);
      b.forward_backward(1, 0);
    }

    // Step 6 "nB1B0": zero-bubble switched on half-way, before B1 on odd h, before B0 on even h.
    bool zb = false;
    for (int i = 0; i < h + 1; ++i) {
      if (i == (h + 1) / 2 && h % 2 == 1) zb = true;
      b.backward(1, zb);
      if (i == (h + 1) / 2 && h % 2 == 0) zb = true;
      b.backward(0, zb);
    }

    // Step 7 "nWB0" and step 8 "nW": drain the deferred weight passes.
    for (int i = 0; i < H - h - 1; ++i) {
      b.weight();
      b.backward(0, true);
    }
    for (int i = 0; i < h + 1; ++i) b.weight();
  }
  return out;
}

}  // namespace tandem
