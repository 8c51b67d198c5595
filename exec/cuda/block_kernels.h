// Kernels of the device block sub-steps (exec/cuda/runtime/device_blocks.cpp) that the other
// exec/cuda files lack. None so far: every operation of the sub-steps is one of kernels.h
// (RMSNorm), nn_ops.h (embedding, cross-entropy, add), balance.h, attention.h
// (rmsnorm_weight_accumulate) or a cudaMemcpyAsync, and the residual adds are nn_ops' add (one
// __fadd_rn per element, the CPU's a + b). Kept as the place for such kernels (Eigen-free, part
// of tandem_exec_cuda).
#pragma once
