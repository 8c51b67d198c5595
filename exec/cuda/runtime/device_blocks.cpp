#include "exec/cuda/runtime/device_blocks.h"
