// idx(i): a signed index or count as the std::size_t the standard containers take.
//
// Why: tandem counts with signed integers (ranks, stages, experts, rows, micro-batches: int and
// int64_t, so that differences and "none" = -1 stay plain), while std::vector indexes with size_t.
// One named conversion instead of a static_cast at every subscript; debug builds and the sanitizer
// build (TANDEM_CHECKED_INDEX) check that the value is not negative (a negative index is a bug,
// never input: input is validated when read). The shipped build does not check.
// Compiled by nvcc it is a host and device function, so kernels index the same way.
#pragma once

#include <cassert>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

#if defined(__CUDACC__)
#define TANDEM_HOST_DEVICE __host__ __device__
#else
#define TANDEM_HOST_DEVICE
#endif

namespace tandem {

// An enumerator indexes its table (by_slot_[idx(SlotClass::x)]) the same way.
template <class I>
TANDEM_HOST_DEVICE constexpr std::size_t idx(I i) noexcept {
  static_assert(std::is_integral_v<I> || std::is_enum_v<I>, "idx() converts integers and enumerators only");
  if constexpr (std::is_enum_v<I>) {
    return idx(static_cast<std::underlying_type_t<I>>(i));
  } else {
#if defined(TANDEM_CHECKED_INDEX) && !defined(__CUDA_ARCH__)
    if constexpr (std::is_signed_v<I>) {
      if (i < 0) {
        std::fprintf(stderr, "tandem: internal error: idx(%lld): a negative index\n", static_cast<long long>(i));
        std::abort();
      }
    }
#else
    if constexpr (std::is_signed_v<I>) assert(i >= 0);
#endif
    return static_cast<std::size_t>(i);
  }
}

}  // namespace tandem
