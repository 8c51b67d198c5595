// splitmix64: one 64-bit mixing step (Steele, Lea and Flood's SplitMix64 output function, seeded
// by adding the golden-ratio increment). tandem derives every seeded value from it by hashing its
// coordinates — (seed, replica, micro-batch, position), (seed, layer, micro-batch, GPU), (seed,
// tensor, index) — rather than drawing from a stream, so a value does not depend on the order in
// which threads, ranks or simulated GPUs ask for it.
#pragma once

#include <cstdint>

namespace tandem {

constexpr uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace tandem
