// MlaConfig: the shape of DeepSeek's multi-head latent attention (exec/ops/attention/attention.h says what
// each part computes). One definition for the CPU reference and the CUDA attention
// (exec/ops/attention/attention_cuda.h).
#pragma once

#include <cstdint>

namespace tandem::spec {

struct MlaConfig {
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t q_lora_rank = 0;  // 0: queries not compressed (single q_proj)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope = 0;
  int64_t qk_rope = 0;  // even
  int64_t v_head = 0;
  double rms_eps = 1e-6;
  double rope_theta = 10000.0;
  bool recompute = true;  // recompute norms, up-projections and RoPE in backward (exec/ops/attention/attention.h)

  int64_t qk_head() const { return qk_nope + qk_rope; }
  // 1 / sqrt(qk_head) in double; each backend rounds it once to its T (the CUDA one to float).
  double softmax_scale() const;
};

}  // namespace tandem::spec
