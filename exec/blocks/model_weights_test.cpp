#include <catch2/catch.hpp>

#include <cmath>
#include <map>
#include <string>

#include "exec/blocks/model_weights.h"
#include "tests/test_paths.h"

using namespace tandem;
using namespace tandem::nn;

TEST_CASE("model_weights: tiny-moe shapes, deterministic seeded init", "[nn][weights]") {
  const ModelCard card = load_model_card(tandem::test::repo("models/tiny-moe.yaml")).value();
  const ModelWeights<float> w = make_model_weights<float>(card, {.seed = 42});
  REQUIRE(w.layers.size() == 8);
  REQUIRE(w.mtp.size() == 1);
  CHECK(w.embed_tokens.rows() == 1024);
  CHECK(w.embed_tokens.cols() == 256);
  CHECK(w.lm_head.rows() == 1024);
  // layer 0 dense, the others MoE (no dense FFN here), the MTP block MoE too
  CHECK(w.layers[0].mlp.has_value());
  CHECK(w.layers[0].mlp->gate.rows() == 512);
  CHECK(w.layers[0].mlp->down.cols() == 512);
  for (size_t i = 1; i < 8; ++i) CHECK_FALSE(w.layers[i].mlp.has_value());
  CHECK_FALSE(w.mtp[0].block.mlp.has_value());
  const MlaWeights<float>& a = w.layers[3].self_attn;
  CHECK(a.q_a_proj.rows() == 128);
  CHECK(a.q_b_proj.rows() == 4 * 48);
  CHECK(a.q_proj.size() == 0);
  CHECK(a.kv_a_proj_with_mqa.rows() == 128 + 16);
  CHECK(a.kv_b_proj.rows() == 4 * 64);
  CHECK(a.o_proj.cols() == 128);
  CHECK(w.mtp[0].input.eh_proj.cols() == 512);
  CHECK(w.layers[5].input_layernorm.isOnes(0));
  CHECK(w.mtp[0].norm.isOnes(0));

  // names are HF's; every tensor named once
  std::map<std::string, int64_t> sizes;
  for_each_tensor(w, [&](const std::string& name, const auto& t) {
    CHECK(sizes.count(name) == 0);
    sizes[name] = t.size();
  });
  CHECK(sizes.at("model.layers.0.mlp.gate_proj.weight") == 512 * 256);
  CHECK(sizes.at("model.layers.8.eh_proj.weight") == 256 * 512);
  CHECK(sizes.at("model.layers.8.shared_head.norm.weight") == 256);
  CHECK(sizes.count("model.layers.2.self_attn.q_proj.weight") == 0);
  int64_t total = 0;
  for (const auto& [n, s] : sizes) total += s;
  CHECK(parameter_count(w) == total);

  // std 0.006 over the embedding
  const double var = w.embed_tokens.cast<double>().squaredNorm() / static_cast<double>(w.embed_tokens.size());
  CHECK(std::sqrt(var) == Approx(0.006).epsilon(0.02));
  CHECK(std::abs(w.embed_tokens.cast<double>().mean()) < 1e-4);

  // deterministic; a layer built alone equals the same layer in the model; seeds differ
  const ModelWeights<float> w2 = make_model_weights<float>(card, {.seed = 42});
  CHECK(w2.layers[4].self_attn.kv_b_proj == w.layers[4].self_attn.kv_b_proj);
  const LayerWeights<float> l4 = make_layer_weights<float>(card, 4, {.seed = 42});
  CHECK(l4.self_attn.o_proj == w.layers[4].self_attn.o_proj);
  CHECK(w.layers[4].self_attn.o_proj != w.layers[5].self_attn.o_proj);
  const LayerWeights<float> l4b = make_layer_weights<float>(card, 4, {.seed = 43});
  CHECK(l4b.self_attn.o_proj != w.layers[4].self_attn.o_proj);
  // double weights round to the float ones
  const LayerWeights<double> l4d = make_layer_weights<double>(card, 4, {.seed = 42});
  CHECK(l4d.self_attn.o_proj.cast<float>() == l4.self_attn.o_proj);
  // zero builder: same shapes, all zero
  const ModelWeights<float> z = make_model_weights<float>(card, {.zero = true});
  CHECK(parameter_count(z) == total);
  for_each_tensor(z, [&](const std::string&, const auto& t) { CHECK(t.isZero(0)); });
}
