// NVIDIA's own host conversions from cuda_fp8.h, as a second, vendor-written reference. Built only
// when CMake finds cuda_fp8.h (TANDEM_FP8_NVIDIA_REFERENCE is then defined); plain g++ compiles
// the header's host path, no CUDA library or GPU is involved.
#pragma once

#include <cstdint>

namespace tandem::fp8::nvidia {

// __nv_cvt_float_to_fp8(x, satfinite ? __NV_SATFINITE : __NV_NOSAT, e5m2 ? __NV_E5M2 : __NV_E4M3)
uint8_t encode(float x, bool e5m2, bool satfinite);
// __nv_cvt_fp8_to_halfraw widened to float (every FP8 value is a half value).
float decode(uint8_t code, bool e5m2);

}  // namespace tandem::fp8::nvidia
