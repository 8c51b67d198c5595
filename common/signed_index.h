// idx(i): a signed index or count as the std::size_t the standard containers take.
//
// Why: tandem counts with signed integers (ranks, stages, experts, rows, micro-batches: int and
// int64_t, so that differences and "none" = -1 stay plain), while std::vector indexes with size_t.
// One named conversion instead of a static_cast at every subscript; debug builds check that the
// value is not negative (a negative index is a bug, never input: input is validated when read).
#pragma once

#include <cassert>
#include <cstddef>
#include <type_traits>

namespace tandem {

// An enumerator indexes its table (by_slot_[idx(SlotClass::x)]) the same way.
template <class I>
constexpr std::size_t idx(I i) noexcept {
  static_assert(std::is_integral_v<I> || std::is_enum_v<I>, "idx() converts integers and enumerators only");
  if constexpr (std::is_enum_v<I>) {
    return idx(static_cast<std::underlying_type_t<I>>(i));
  } else {
    if constexpr (std::is_signed_v<I>) assert(i >= 0);
    return static_cast<std::size_t>(i);
  }
}

}  // namespace tandem
