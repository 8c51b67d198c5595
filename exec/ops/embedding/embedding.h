// Token embedding: forward is a row lookup, backward a scatter-add into the table's gradient.
// Runs in T (DeepSeek-V3 keeps the embedding out of FP8). Token ids are checked (std::out_of_range).
#pragma once

#include <cstdint>
#include <span>

#include "exec/ops/tensor.h"

namespace tandem::nn {

// y[i,:] = table[tokens[i], :]   (table [vocab, hidden])
template <class T>
Mat<T> embedding_forward(const Mat<T>& table, std::span<const int32_t> tokens);
// dtable[tokens[i], :] += dy[i, :] for i = 0, 1, … in order (repeated tokens sum in row order:
// deterministic). The caller zeroes dtable.
template <class T>
void embedding_backward(std::span<const int32_t> tokens, const Mat<T>& dy, Mat<T>& dtable);

}  // namespace tandem::nn
