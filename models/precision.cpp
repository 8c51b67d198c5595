#include "models/precision.h"

namespace tandem {

double bytes_per_element(Dtype d) {
  switch (d) {
    case Dtype::fp8_e4m3: return 1.0;
    case Dtype::e5m6: return 1.5;
    case Dtype::bf16: return 2.0;
    case Dtype::fp32: return 4.0;
    case Dtype::int32: return 4.0;
  }
  return 0;
}

const char* to_string(Dtype d) {
  switch (d) {
    case Dtype::fp8_e4m3: return "fp8_e4m3";
    case Dtype::e5m6: return "e5m6";
    case Dtype::bf16: return "bf16";
    case Dtype::fp32: return "fp32";
    case Dtype::int32: return "int32";
  }
  return "?";
}

std::string PrecisionRecipe::describe() const {
  if (!fp8) return "BF16 GEMMs; FP32 master weights and gradients; BF16 moments";
  return "FP8 E4M3 GEMMs, 1x" + std::to_string(act_tile) + " activation tiles and " +
         std::to_string(weight_block) + "x" + std::to_string(weight_block) +
         " weight blocks (FP32 scales" + (pow2_scales ? ", power of two" : "") +
         "); FP32 master weights and gradients; BF16 moments";
}

}  // namespace tandem
