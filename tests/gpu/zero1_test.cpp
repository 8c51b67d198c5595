// placeholder
#include "tests/gpu/gpu_check.h"
