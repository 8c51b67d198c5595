#include <catch2/catch.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "models/model_card.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;

namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  std::filesystem::create_directories("/tmp/tandem_tests");
  const std::string path = "/tmp/tandem_tests/" + name;
  std::ofstream(path) << text;
  return path;
}

// A Hugging Face config.json in the exact format of DeepSeek-V3's, written out for this test.
const char* kHfConfigV3 = R"({
  "architectures": ["DeepseekV3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "auto_map": {"AutoConfig": "configuration_deepseek.DeepseekV3Config"},
  "aux_loss_alpha": 0.001,
  "bos_token_id": 0,
  "eos_token_id": 1,
  "ep_size": 1,
  "first_k_dense_replace": 3,
  "hidden_act": "silu",
  "hidden_size": 7168,
  "initializer_range": 0.02,
  "intermediate_size": 18432,
  "kv_lora_rank": 512,
  "max_position_embeddings": 163840,
  "model_type": "deepseek_v3",
  "moe_intermediate_size": 2048,
  "moe_layer_freq": 1,
  "n_group": 8,
  "n_routed_experts": 256,
  "n_shared_experts": 1,
  "norm_topk_prob": true,
  "num_attention_heads": 128,
  "num_experts_per_tok": 8,
  "num_hidden_layers": 61,
  "num_key_value_heads": 128,
  "num_nextn_predict_layers": 1,
  "pretraining_tp": 1,
  "q_lora_rank": 1536,
  "qk_nope_head_dim": 128,
  "qk_rope_head_dim": 64,
  "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                          "weight_block_size": [128, 128]},
  "rms_norm_eps": 1e-06,
  "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
                   "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
  "rope_theta": 10000,
  "routed_scaling_factor": 2.5,
  "scoring_func": "sigmoid",
  "seq_aux": true,
  "tie_word_embeddings": false,
  "topk_group": 4,
  "topk_method": "noaux_tc",
  "torch_dtype": "bfloat16",
  "transformers_version": "4.33.1",
  "use_cache": true,
  "v_head_dim": 128,
  "vocab_size": 129280
})";

InputError load_error(const std::string& text) {
  auto r = load_model_card(write_temp("bad_model.yaml", text));
  REQUIRE_FALSE(r.ok());
  return r.error();
}

}  // namespace

TEST_CASE("shipped model cards load", "[cards]") {
  for (const char* name : {"deepseek-v3", "deepseek-v2", "deepseek-v2-lite", "tiny-moe"}) {
    auto r = load_model_card(repo(std::string("models/") + name + ".yaml"));
    INFO(name << ": " << (r.ok() ? "" : r.error().message()));
    REQUIRE(r.ok());
    CHECK(r.value().name == name);
  }
  const ModelCard v3 = load_model_card(repo("models/deepseek-v3.yaml")).value();
  CHECK(v3.num_moe_layers() == 58);
  CHECK(v3.is_moe_layer(3));
  CHECK_FALSE(v3.is_moe_layer(2));
  CHECK(v3.q_head_dim() == 192);
  const ModelCard lite = load_model_card(repo("models/deepseek-v2-lite.yaml")).value();
  CHECK_FALSE(lite.q_lora_rank.has_value());
}

TEST_CASE("a Hugging Face config.json loads as a model card", "[cards]") {
  auto r = load_model_card(write_temp("config.json", kHfConfigV3));
  INFO((r.ok() ? "" : r.error().message()));
  REQUIRE(r.ok());
  const ModelCard& hf = r.value();
  const ModelCard yaml = load_model_card(repo("models/deepseek-v3.yaml")).value();
  CHECK(hf.name == "config");
  CHECK(hf.hidden_size == yaml.hidden_size);
  CHECK(hf.num_hidden_layers == yaml.num_hidden_layers);
  CHECK(hf.q_lora_rank == yaml.q_lora_rank);
  CHECK(hf.n_routed_experts == yaml.n_routed_experts);
  CHECK(hf.topk_method == "noaux_tc");
  CHECK(hf.routed_scaling_factor == Approx(2.5));
  CHECK(hf.num_nextn_predict_layers == 1);
}

TEST_CASE("bad model cards name the file, the key and the reason", "[cards]") {
  const std::string good = R"(
hidden_size: 256
num_hidden_layers: 4
intermediate_size: 512
num_attention_heads: 4
kv_lora_rank: 128
qk_nope_head_dim: 32
qk_rope_head_dim: 16
v_head_dim: 32
vocab_size: 1000
)";
  REQUIRE(load_model_card(write_temp("good_model.yaml", good)).ok());

  auto e = load_error(good + "hiden_size: 3\n");
  CHECK(e.key == "hiden_size");
  CHECK(e.reason == "unknown key");
  CHECK(e.file.find("bad_model.yaml") != std::string::npos);

  e = load_error("num_hidden_layers: 4\nintermediate_size: 512\n");
  CHECK(e.key == "hidden_size");
  CHECK(e.reason.find("missing") != std::string::npos);

  e = load_error(good + "n_routed_experts: many\n");
  CHECK(e.key == "n_routed_experts");
  CHECK(e.reason.find("whole number") != std::string::npos);

  e = load_error(good + "n_routed_experts: 16\nnum_experts_per_tok: 4\nmoe_intermediate_size: 64\nn_group: 5\n");
  CHECK(e.key == "n_group");
  CHECK(e.reason.find("divide") != std::string::npos);

  e = load_error(good + "n_routed_experts: 16\nnum_experts_per_tok: 20\nmoe_intermediate_size: 64\n");
  CHECK(e.key == "num_experts_per_tok");

  e = load_error(good + "rms_norm_eps: -1\n");
  CHECK(e.key == "rms_norm_eps");
  CHECK(e.reason.find("must be in") != std::string::npos);

  e = load_error("[1, 2, 3]\n");
  CHECK(e.reason.find("map") != std::string::npos);

  e = load_error("hidden_size: [1\n");
  CHECK(e.reason.find("YAML") != std::string::npos);
}
