// The token embedding on the device: the twin of embedding.h, bit-identical to it (a copy: the same
// adds in the same order). Host launchers on device pointers, asynchronous on `stream`, each
// kernel's launch checked (CudaError); empty shapes are no-ops; negative sizes throw
// std::invalid_argument. FP32 row-major tensors, like the CPU's Mat<float>. The CPU is built with
// -ffp-contract=off and no FMA; the device code spells every rounding with an explicit _rn
// intrinsic so nvcc cannot contract either.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

// out[i, :] = table[tokens[i], :]   table [vocab, hidden], tokens [n_tokens], out [n_tokens, hidden].
// The CPU throws on a token outside [0, vocab); a kernel cannot, and never reads out of bounds:
// such a row of `out` is filled with NaN (so it cannot pass unnoticed) and, when `bad_token` is
// not null, *bad_token is set to 1 (never cleared: the caller zeroes it and reads it when it likes).
void embedding_forward(const float* table, int vocab, int hidden, const int32_t* tokens, int n_tokens, float* out,
                       int* bad_token, cudaStream_t stream);

// d_table[tokens[i], :] += d_out[i, :] for i = 0, 1, … in order; accumulates (the caller zeroes
// d_table, as on the CPU). Deterministic without float atomics: the block of the FIRST occurrence
// of a token id owns that table row and adds every row of d_out with that id, in increasing i,
// into the row's previous value. So each element sees exactly the CPU's additions in the CPU's
// order: bit-identical to embedding_backward<float>. Cost: finding the first occurrences is an
// O(n_tokens²) integer scan (≈ 10⁸ compares at 16K tokens, tens of µs); the adds themselves are
// one pass over d_out. A token outside [0, vocab) is skipped (and sets *bad_token, as above).
void embedding_backward(const int32_t* tokens, int n_tokens, const float* d_out, int vocab, int hidden,
                        float* d_table, int* bad_token, cudaStream_t stream);

}  // namespace tandem::cuda
