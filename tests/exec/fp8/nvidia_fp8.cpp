#include "nvidia_fp8.h"

#include <cuda_fp16.h>
#include <cuda_fp8.h>

namespace tandem::fp8::nvidia {

uint8_t encode(float x, bool e5m2, bool satfinite) {
  return __nv_cvt_float_to_fp8(x, satfinite ? __NV_SATFINITE : __NV_NOSAT,
                               e5m2 ? __NV_E5M2 : __NV_E4M3);
}

float decode(uint8_t code, bool e5m2) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(code, e5m2 ? __NV_E5M2 : __NV_E4M3);
  return __half2float(__half(h));
}

}  // namespace tandem::fp8::nvidia
