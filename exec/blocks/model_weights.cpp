#include "exec/blocks/model_weights.h"

#include <cmath>
#include <numbers>
#include <random>
#include <stdexcept>

#include "common/splitmix64.h"

namespace tandem::nn {
namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 14695981039346656037ull;
  for (const unsigned char ch : s) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

// N(0, std²) samples from mt19937_64 through Box–Muller (two samples per pair of uniforms).
class Normal {
 public:
  Normal(uint64_t seed, double std) : rng_(seed), std_(std) {}
  double next() {
    if (have_spare_) {
      have_spare_ = false;
      return spare_ * std_;
    }
    // uniforms in (0, 1]: 53 random bits
    const double u1 = (static_cast<double>(rng_() >> 11) + 1.0) * 0x1p-53;
    const double u2 = static_cast<double>(rng_() >> 11) * 0x1p-53;
    const double r = std::sqrt(-2.0 * std::log(u1));
    const double a = 2.0 * std::numbers::pi * u2;
    spare_ = r * std::sin(a);
    have_spare_ = true;
    return r * std::cos(a) * std_;
  }

 private:
  std::mt19937_64 rng_;
  double std_;
  double spare_ = 0;
  bool have_spare_ = false;
};

template <class T>
Mat<T> matrix(int64_t rows, int64_t cols, const std::string& name, const InitOptions& o) {
  if (o.zero) return Mat<T>::Zero(rows, cols);
  Normal d(splitmix64(o.seed ^ fnv1a(name)), o.std);
  Mat<T> m(rows, cols);
  for (int64_t i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(d.next());
  return m;
}

template <class T>
Vec<T> norm_weight(int64_t n, const InitOptions& o) {
  return o.zero ? Vec<T>::Zero(n) : Vec<T>::Ones(n);
}

void check_card(const ModelCard& c) {
  if (c.hidden_size <= 0 || c.vocab_size <= 0 || c.num_attention_heads <= 0 ||
      c.kv_lora_rank <= 0 || c.qk_rope_head_dim <= 0 || c.v_head_dim <= 0)
    throw std::invalid_argument("make_model_weights: card '" + c.name + "' lacks MLA sizes");
}

}  // namespace

template <class T>
LayerWeights<T> make_layer_weights(const ModelCard& card, int64_t layer, const InitOptions& o) {
  check_card(card);
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  const MlaConfig c = mla_config(card);
  const int64_t H = c.hidden, qk = c.heads * c.qk_head();
  LayerWeights<T> l;
  l.input_layernorm = norm_weight<T>(H, o);
  MlaWeights<T>& a = l.self_attn;
  if (c.q_lora_rank > 0) {
    a.q_a_proj = matrix<T>(c.q_lora_rank, H, p + "self_attn.q_a_proj.weight", o);
    a.q_a_layernorm = norm_weight<T>(c.q_lora_rank, o);
    a.q_b_proj = matrix<T>(qk, c.q_lora_rank, p + "self_attn.q_b_proj.weight", o);
  } else {
    a.q_proj = matrix<T>(qk, H, p + "self_attn.q_proj.weight", o);
  }
  a.kv_a_proj_with_mqa =
      matrix<T>(c.kv_lora_rank + c.qk_rope, H, p + "self_attn.kv_a_proj_with_mqa.weight", o);
  a.kv_a_layernorm = norm_weight<T>(c.kv_lora_rank, o);
  a.kv_b_proj = matrix<T>(c.heads * (c.qk_nope + c.v_head), c.kv_lora_rank,
                          p + "self_attn.kv_b_proj.weight", o);
  a.o_proj = matrix<T>(H, c.heads * c.v_head, p + "self_attn.o_proj.weight", o);
  l.post_attention_layernorm = norm_weight<T>(H, o);
  if (!card.is_moe_layer(layer)) {
    const int64_t I = card.intermediate_size;
    l.mlp = FfnWeights<T>{matrix<T>(I, H, p + "mlp.gate_proj.weight", o),
                          matrix<T>(I, H, p + "mlp.up_proj.weight", o),
                          matrix<T>(H, I, p + "mlp.down_proj.weight", o)};
  }
  return l;
}

template <class T>
MtpModuleWeights<T> make_mtp_weights(const ModelCard& card, int64_t k, const InitOptions& o) {
  const int64_t layer = card.num_hidden_layers + k, H = card.hidden_size;
  const std::string p = "model.layers." + std::to_string(layer) + ".";
  MtpModuleWeights<T> m;
  m.input.enorm = norm_weight<T>(H, o);
  m.input.hnorm = norm_weight<T>(H, o);
  m.input.eh_proj = matrix<T>(H, 2 * H, p + "eh_proj.weight", o);
  m.block = make_layer_weights<T>(card, layer, o);
  m.norm = norm_weight<T>(H, o);
  return m;
}

template <class T>
ModelWeights<T> make_model_weights(const ModelCard& card, const InitOptions& o) {
  check_card(card);
  ModelWeights<T> w;
  const int64_t H = card.hidden_size, V = card.vocab_size;
  w.embed_tokens = matrix<T>(V, H, "model.embed_tokens.weight", o);
  for (int64_t i = 0; i < card.num_hidden_layers; ++i)
    w.layers.push_back(make_layer_weights<T>(card, i, o));
  w.norm = norm_weight<T>(H, o);
  if (!card.tie_word_embeddings) w.lm_head = matrix<T>(V, H, "lm_head.weight", o);
  for (int64_t k = 0; k < card.num_nextn_predict_layers; ++k)
    w.mtp.push_back(make_mtp_weights<T>(card, k, o));
  return w;
}

#define TANDEM_NN_WEIGHTS(T)                                                                 \
  template LayerWeights<T> make_layer_weights<T>(const ModelCard&, int64_t, const InitOptions&); \
  template MtpModuleWeights<T> make_mtp_weights<T>(const ModelCard&, int64_t, const InitOptions&); \
  template ModelWeights<T> make_model_weights<T>(const ModelCard&, const InitOptions&);
TANDEM_NN_WEIGHTS(float)
TANDEM_NN_WEIGHTS(double)
#undef TANDEM_NN_WEIGHTS

}  // namespace tandem::nn
