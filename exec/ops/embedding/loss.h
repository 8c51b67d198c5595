// Softmax cross-entropy over the vocabulary, scaled by the caller:
//   loss   = scale · Σ_i ( logsumexp(logits[i,:]) − logits[i, targets[i]] )
//   dlogits[i,:] = scale · ( softmax(logits[i,:]) − onehot(targets[i]) )
// The executor passes scale = 1 / (tokens in the global batch), so the micro-batches' losses and
// gradients sum to the batch mean (and the MTP loss passes λ / tokens).
// A negative target ignores the row (no loss, zero gradient): e.g. positions with no next token.
// Each row is computed in double (max, Σexp in column order), dlogits rounded to T; the loss is
// summed over rows in row order, in double. Deterministic; row i's dlogits depend only on row i.
#pragma once

#include <cstdint>
#include <span>

#include "exec/ops/tensor.h"

namespace tandem::nn {

template <class T>
struct CrossEntropy {
  double loss = 0;  // scaled sum over the (non-ignored) rows
  Mat<T> dlogits;   // [M, vocab]
};

template <class T>
CrossEntropy<T> cross_entropy(const Mat<T>& logits, std::span<const int32_t> targets,
                              double scale);

}  // namespace tandem::nn
