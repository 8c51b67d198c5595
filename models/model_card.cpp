#include "models/model_card.h"

#include <filesystem>

namespace tandem {

namespace {

// Keys of DeepSeek Hugging Face config.json files that have no bearing on tandem's results
// (token ids, initialisation, library versions, inference-only settings, RoPE parameters that
// do not change FLOPs or bytes). Accepted so that a config.json loads as a model card.
constexpr const char* kIgnoredHuggingFaceKeys[] = {
    "_name_or_path", "architectures",     "attention_bias",       "attention_dropout",
    "auto_map",      "aux_loss_alpha",    "bos_token_id",         "eos_token_id",
    "pad_token_id",  "ep_size",           "initializer_range",    "model_type",
    "pretraining_tp", "quantization_config", "rope_scaling",      "rope_theta",
    "rope_interleave", "seq_aux",         "torch_dtype",          "transformers_version",
    "use_cache",     "head_dim",
};

constexpr int64_t kMaxDim = 1 << 20;

}  // namespace

int64_t ModelCard::num_moe_layers() const {
  int64_t n = 0;
  for (int64_t i = 0; i < num_hidden_layers; ++i) n += is_moe_layer(i) ? 1 : 0;
  return n;
}

ModelCard read_model_card(const YAML::Node& node, const std::string& file,
                          std::shared_ptr<const OriginMap> origins) {
  CardReader r(node, file, "", std::move(origins));
  ModelCard m;
  m.source_file = file;
  m.name = r.text_or("name", std::filesystem::path(file).stem().string());
  r.ignore("description");
  r.ignore("source");
  for (const char* k : kIgnoredHuggingFaceKeys) r.ignore(k);

  m.hidden_size = r.integer("hidden_size", 1, kMaxDim);
  m.num_hidden_layers = r.integer("num_hidden_layers", 1, 1024);
  m.intermediate_size = r.integer("intermediate_size", 1, kMaxDim);
  m.num_attention_heads = r.integer("num_attention_heads", 1, 4096);
  m.num_key_value_heads = r.integer_or("num_key_value_heads", m.num_attention_heads, 1, 4096);
  m.q_lora_rank = r.optional_integer("q_lora_rank", 1, kMaxDim);
  m.kv_lora_rank = r.integer("kv_lora_rank", 1, kMaxDim);
  m.qk_nope_head_dim = r.integer("qk_nope_head_dim", 1, 65536);
  m.qk_rope_head_dim = r.integer("qk_rope_head_dim", 0, 65536);
  if (m.qk_rope_head_dim % 2 != 0)
    r.fail("qk_rope_head_dim", "must be even (RoPE rotates pairs of channels)");
  m.v_head_dim = r.integer("v_head_dim", 1, 65536);

  m.n_routed_experts = r.integer_or("n_routed_experts", 0, 0, 65536);
  m.first_k_dense_replace = r.integer_or("first_k_dense_replace", 0, 0, m.num_hidden_layers);
  m.moe_layer_freq = r.integer_or("moe_layer_freq", 1, 1, m.num_hidden_layers);
  if (m.n_routed_experts > 0) {
    m.n_shared_experts = r.integer_or("n_shared_experts", 0, 0, 64);
    m.num_experts_per_tok = r.integer("num_experts_per_tok", 1, m.n_routed_experts);
    m.moe_intermediate_size = r.integer("moe_intermediate_size", 1, kMaxDim);
    m.n_group = r.integer_or("n_group", 1, 1, m.n_routed_experts);
    if (m.n_routed_experts % m.n_group != 0)
      r.fail("n_group", "must divide n_routed_experts (" + std::to_string(m.n_routed_experts) +
                            "), got " + std::to_string(m.n_group));
    m.topk_group = r.integer_or("topk_group", m.n_group, 1, m.n_group);
    const int64_t reachable = m.topk_group * (m.n_routed_experts / m.n_group);
    if (m.num_experts_per_tok > reachable)
      r.fail("num_experts_per_tok",
             "cannot pick " + std::to_string(m.num_experts_per_tok) + " experts from " +
                 std::to_string(m.topk_group) + " groups of " +
                 std::to_string(m.n_routed_experts / m.n_group));
    m.routed_scaling_factor = r.number_or("routed_scaling_factor", 1.0, 0.0, 1e6);
    m.scoring_func = r.choice_or("scoring_func", "softmax", {"softmax", "sigmoid"});
    m.topk_method = r.choice_or("topk_method", m.n_group > 1 ? "group_limited_greedy" : "greedy",
                                {"greedy", "group_limited_greedy", "noaux_tc"});
    m.norm_topk_prob = r.boolean_or("norm_topk_prob", false);
    if (m.first_k_dense_replace >= m.num_hidden_layers && m.num_moe_layers() == 0)
      r.fail("first_k_dense_replace", "leaves no MoE layer although n_routed_experts > 0");
  } else {
    for (const char* k : {"n_shared_experts", "num_experts_per_tok", "moe_intermediate_size",
                          "n_group", "topk_group", "routed_scaling_factor", "scoring_func",
                          "topk_method", "norm_topk_prob"})
      r.ignore(k);
  }

  m.vocab_size = r.integer("vocab_size", 1, 16 << 20);
  m.tie_word_embeddings = r.boolean_or("tie_word_embeddings", false);
  m.num_nextn_predict_layers = r.integer_or("num_nextn_predict_layers", 0, 0, 16);
  m.hidden_act = r.choice_or("hidden_act", "silu", {"silu", "swiglu"});
  m.rms_norm_eps = r.number_or("rms_norm_eps", 1e-6, 0.0, 1.0);
  m.max_position_embeddings = r.integer_or("max_position_embeddings", 4096, 1, int64_t{1} << 32);
  r.finish();
  return m;
}

Result<ModelCard> load_model_card(const std::string& path) {
  return catch_input_errors([&] { return read_model_card(parse_card_file(path), path); });
}

}  // namespace tandem
