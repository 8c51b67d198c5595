// ModelCard: the architecture hyperparameters of a DeepSeek-family MoE transformer.
//
// Field names are those of the Hugging Face `config.json` of DeepSeek-V2/V3, so such a file is a
// valid model card (JSON is read as YAML). Keys of config.json with no bearing on cost (token ids,
// transformers version, ...) are accepted and ignored; any other unknown key is an error.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "common/card_reader.h"
#include "common/input_error.h"

namespace tandem {

struct ModelCard {
  std::string name;         // `name` key, else the file's stem
  std::string source_file;  // where it was loaded from

  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t first_k_dense_replace = 0;  // layers [0, k) use the dense FFN
  int64_t moe_layer_freq = 1;         // a layer i >= k is MoE when i % freq == 0
  int64_t intermediate_size = 0;      // dense FFN width

  // Multi-head latent attention (MLA).
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;  // informational: MLA has per-head keys from the latent
  std::optional<int64_t> q_lora_rank;  // nullopt: queries are not compressed (V2-Lite)
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;

  // Mixture of experts.
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 0;
  int64_t num_experts_per_tok = 0;  // top-K routed experts
  int64_t moe_intermediate_size = 0;
  int64_t n_group = 1;     // expert groups (= nodes of an EP group in DeepSeek-V3 training)
  int64_t topk_group = 1;  // groups a token may use (node limit M)
  double routed_scaling_factor = 1.0;
  std::string scoring_func = "softmax";  // "sigmoid" (V3) or "softmax" (V2)
  std::string topk_method = "greedy";    // "noaux_tc", "group_limited_greedy", "greedy"
  bool norm_topk_prob = false;

  int64_t vocab_size = 0;
  bool tie_word_embeddings = false;
  int64_t num_nextn_predict_layers = 0;  // MTP depth D
  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  int64_t max_position_embeddings = 0;

  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  int64_t num_moe_layers() const;
  int64_t q_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

// Reads a model card from a file (YAML or Hugging Face JSON).
Result<ModelCard> load_model_card(const std::string& path);
// Reads a model card from a parsed node; `origins` names overridden values (scenario, --set).
ModelCard read_model_card(const YAML::Node& node, const std::string& file,
                          std::shared_ptr<const OriginMap> origins = nullptr);

}  // namespace tandem
