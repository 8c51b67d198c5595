#include "exec/cuda/block_kernels.h"
