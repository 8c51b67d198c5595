#include "cli/describe_command.h"

#include <cmath>
#include <cstdio>

#include "common/format.h"
#include <map>

#include "models/workload.h"
#include "scenarios/memory.h"
#include "scenarios/scenario.h"
#include "scenarios/stage_partition.h"
#include "topologies/topology.h"

namespace tandem {

namespace {

// Parameter breakdown of the main model by component (MTP separately).
std::map<std::string, double> param_breakdown(const Workload& w) {
  std::map<std::string, double> out;
  for (const auto& b : w.blocks) {
    for (const auto& op : b.ops) {
      std::string cat;
      if (b.kind == BlockKind::mtp) cat = "mtp_module";
      else if (op.kind == OpKind::embedding) cat = "embedding";
      else if (op.kind == OpKind::head) cat = "output_head";
      else if (op.kind == OpKind::norm) cat = "norms";
      else if (op.kind == OpKind::router) cat = "routers";
      else if (op.routed) cat = "routed_experts";
      else if (op.name.find("shared.") != std::string::npos) cat = "shared_experts";
      else if (op.name.find("ffn.") != std::string::npos) cat = "dense_ffn";
      else cat = "attention";
      out[cat] += static_cast<double>(op.params);
    }
  }
  return out;
}

void describe_model(const Workload& w, std::string& t, nlohmann::json& j) {
  const ModelCard& m = w.model;
  const auto bd = param_breakdown(w);
  t += strprintf("Model %s (%s)\n", m.name.c_str(), m.source_file.c_str());
  t += strprintf("  %lld layers (%lld MoE, %lld dense), hidden %lld, %lld heads, MLA q_lora %s kv_lora %lld,\n",
           (long long)m.num_hidden_layers, (long long)m.num_moe_layers(),
           (long long)(m.num_hidden_layers - m.num_moe_layers()), (long long)m.hidden_size,
           (long long)m.num_attention_heads,
           m.q_lora_rank ? std::to_string(*m.q_lora_rank).c_str() : "none", (long long)m.kv_lora_rank);
  t += strprintf("  %lld routed experts (top-%lld, %lld groups, <= %lld groups per token) + %lld shared, MTP depth %lld\n",
           (long long)m.n_routed_experts, (long long)m.num_experts_per_tok, (long long)m.n_group,
           (long long)m.topk_group, (long long)m.n_shared_experts, (long long)m.num_nextn_predict_layers);
  t += "Parameters\n";
  t += strprintf("  main model total      %9.3f B\n", w.params_main() / 1e9);
  for (const char* k : {"embedding", "attention", "dense_ffn", "routed_experts", "shared_experts",
                        "routers", "norms", "output_head"}) {
    auto it = bd.find(k);
    if (it != bd.end()) t += strprintf("    %-18s  %9.3f B\n", k, it->second / 1e9);
  }
  t += strprintf("  MTP modules (unique)  %9.3f B   (embedding and output head shared with the main model)\n",
           w.params_mtp_unique() / 1e9);
  t += strprintf("  activated per token   %9.3f B   (all non-routed + top-%lld routed experts + output head;\n"
           "                                    input embedding excluded: a lookup; %.3f B with it)\n",
           w.params_active(false) / 1e9, (long long)m.num_experts_per_tok, w.params_active(true) / 1e9);
  if (m.num_nextn_predict_layers > 0)
    t += strprintf("  MTP activated         %9.3f B   (incl. shared embedding and head)\n",
             w.params_mtp_active() / 1e9);
  const int64_t S = w.micro_batch.seq_len;
  t += strprintf("FLOPs per token at sequence %lld (training = forward + backward-input + backward-weight)\n",
           (long long)S);
  t += strprintf("  causal (lower triangle)   %8.2f GFLOP   forward %.2f\n", w.train_flops_per_token(true) / 1e9,
           w.forward_flops_per_token(true) / 1e9);
  t += strprintf("  non-causal (full square)  %8.2f GFLOP\n", w.train_flops_per_token(false) / 1e9);
  if (m.num_nextn_predict_layers > 0)
    t += strprintf("  MTP modules add           %8.2f GFLOP (not in the figures above)\n",
             w.mtp_train_flops_per_token() / 1e9);
  t += strprintf("KV cache per token          %8.0f B  (%lld layers x (kv_lora %lld + rope %lld) x BF16)\n",
           w.kv_cache_bytes_per_token(), (long long)m.num_hidden_layers, (long long)m.kv_lora_rank,
           (long long)m.qk_rope_head_dim);

  j["model"] = m.name;
  j["params_total"] = w.params_main();
  j["params_total_with_mtp"] = w.params_total();
  j["params_active"] = w.params_active(false);
  j["params_active_with_embedding"] = w.params_active(true);
  j["params_mtp"] = w.params_mtp_unique();
  j["params_mtp_active"] = w.params_mtp_active();
  nlohmann::json pb;
  for (const auto& [k, v] : bd) pb[k] = static_cast<int64_t>(v);
  j["params_breakdown"] = pb;
  j["seq_len"] = S;
  j["train_flops_per_token_at_seq_len"] = w.train_flops_per_token(true);
  j["train_flops_per_token_noncausal_at_seq_len"] = w.train_flops_per_token(false);
  j["mtp_train_flops_per_token_at_seq_len"] = w.mtp_train_flops_per_token();
  j["kv_cache_bytes_per_token"] = w.kv_cache_bytes_per_token();
  // The headline figure is defined at sequence 4096, causal, whatever the scenario's length.
  Workload w4096 = build_workload(m, MicroBatch{1, 4096}, w.precision, w.recompute, ExpertLayout{});
  j["train_flops_per_token"] = w4096.train_flops_per_token(true);
  j["train_flops_per_token_noncausal"] = w4096.train_flops_per_token(false);
}

void describe_ops(const Workload& w, std::string& t) {
  t += "Ops of one micro-batch (per GPU), first block of each kind\n";
  t += strprintf("  %-22s %-9s %-14s %9s %9s %9s %9s %9s %10s\n", "op", "part", "kind", "params(M)", "F GFLOP",
           "B GFLOP", "W GFLOP", "F MB", "kept MB");
  std::map<BlockKind, bool> seen;
  for (const auto& b : w.blocks) {
    if (seen[b.kind]) continue;
    seen[b.kind] = true;
    t += strprintf("  [%s]\n", b.name.c_str());
    for (const auto& op : b.ops)
      t += strprintf("  %-22s %-9s %-14s %9.2f %9.2f %9.2f %9.2f %9.1f %10.1f\n", op.name.c_str(),
               to_string(op.part), to_string(op.kind), op.params / 1e6, op.fwd.flops() / 1e9,
               op.bwd_input.flops() / 1e9, op.bwd_weight.flops() / 1e9, op.fwd.bytes() / 1e6,
               op.kept_bytes / 1e6);
  }
}

void describe_cluster(const ClusterCard& c, std::string& t, nlohmann::json& j) {
  t += strprintf("Cluster %s (%s)\n", c.name.c_str(), c.source_file.c_str());
  t += strprintf("  %lld nodes x %lld %s: %lld SMs, %.0f GB HBM at %.2f TB/s, dense BF16 %.0f / FP8 %.0f TFLOP/s\n",
           (long long)c.nodes, (long long)c.gpus_per_node, c.gpu.name.c_str(), (long long)c.gpu.sms,
           c.gpu.hbm_gbytes, c.gpu.hbm_tbytes_s, c.gpu.bf16_tflops, c.gpu.fp8_tflops);
  const Topology topo(c);
  t += topo.summary();
  if (!t.empty() && t.back() != '\n') t += "\n";
  j["cluster"] = c.name;
  j["gpus_in_cluster"] = c.gpus();
  j["bisection_bytes_per_s"] = topo.bisection_bandwidth();
  j["connected"] = topo.connected();
}

void describe_scenario(const Scenario& s, const DescribeOptions& o, std::string& t, nlohmann::json& j) {
  const Workload w = scenario_workload(s);
  t += strprintf("Scenario %s (%s)\n  %s\n", s.name.c_str(), s.file.c_str(), s.description.c_str());
  for (const auto& ov : s.overrides) t += strprintf("  --set %s\n", ov.c_str());
  const int64_t C = s.micro_batches();
  t += strprintf("Plan: %lld GPUs = PP%lld x DP%lld (TP%lld), EP%lld (%s), ZeRO-%lld; %s with %lld micro-batches\n"
           "      of %lld x %lld tokens per pipeline; %.1fM tokens per step; %lld of %lld SMs for communication\n",
           (long long)s.gpus, (long long)s.plan.pp, (long long)s.plan.dp, (long long)s.plan.tp,
           (long long)s.plan.ep,
           s.plan.ep >= s.cluster.gpus_per_node
               ? strprintf("%lld nodes", (long long)(s.plan.ep / s.cluster.gpus_per_node)).c_str()
               : "within a node",
           (long long)s.plan.zero_stage, to_string(s.schedule.kind), (long long)C,
           (long long)s.batch.micro_batch_sequences, (long long)s.batch.seq_len, s.tokens_per_step() / 1e6,
           (long long)s.comm.sms, (long long)s.cluster.gpu.sms);
  t += strprintf("Precision: %s\n", s.precision.describe().c_str());
  describe_model(w, t, j);
  if (o.ops) describe_ops(w, t);
  describe_cluster(s.cluster, t, j);

  const StagePartition part = scenario_partition(s, w);
  t += strprintf("Stage partition (%lld stages%s)\n", (long long)s.stages(),
           s.schedule.stage_layers.empty() ? ", balanced with the calibrated costs for the schedule" : ", from schedule.stage_layers");
  t += part.describe(w);
  t += part.mirrored ? std::string("Compute per micro-batch by pipeline rank (forward, backward and weight gradients of the stages it holds)\n")
                     : std::string("Load per micro-batch by pipeline rank (compute, and the all-to-alls this schedule leaves exposed)\n");
  t += part.describe_ranks();
  nlohmann::json jp = nlohmann::json::array();
  for (const Stage& st : part.stages)
    jp.push_back({{"first_block", st.first_block}, {"end_block", st.end_block}, {"layers", st.layers},
                  {"train_flops", st.cost}, {part.load_in_seconds ? "compute_s" : "load_flops", st.load}});
  const double estimate = estimate_step_seconds(s, w, part);
  t += strprintf("  estimated step %.3f s (the Program with calibrated task times, no network contention: what the balancer minimises)\n", estimate);
  j["stage_partition"] = {{"stages", jp}, {"mirrored", part.mirrored}, {"rank_loads", part.rank_loads()},
                          {"rank_loads_unit", part.load_in_seconds ? "s" : "flops"},
                          {"manual", !s.schedule.stage_layers.empty()}, {"estimated_step_s", estimate}};

  // All-to-all of one MoE layer.
  nlohmann::json a2a;
  for (const auto& b : w.blocks) {
    if (!b.has_all_to_all) continue;
    const AllToAll& a = b.all_to_all;
    t += strprintf("All-to-all per MoE layer per micro-batch, per GPU (%s routing, node limit %lld)\n",
             "balanced", (long long)s.comm.node_limit);
    t += strprintf("  per token: %.2f nodes (%.2f remote, each crossed once on IB), %.2f GPUs, %.2f NVLink copies\n",
             a.dest_nodes_per_token, a.remote_nodes_per_token, a.dest_gpus_per_token, a.nvlink_sends_per_token);
    t += strprintf("  dispatch (%s, %.0f B/token copy): IB %.1f MB, NVLink %.1f MB\n",
             s.precision.fp8 ? "FP8 + scales" : "BF16", a.dispatch_bytes_per_copy,
             a.dispatch_ib_bytes() / 1e6, a.dispatch_nvlink_bytes() / 1e6);
    t += strprintf("  combine  (BF16, %.0f B/token copy):        IB %.1f MB, NVLink %.1f MB\n",
             a.combine_bytes_per_copy, a.combine_ib_bytes() / 1e6, a.combine_nvlink_bytes() / 1e6);
    t += "  backward: the same volumes with the shapes swapped (gradient of combine FP8, of dispatch BF16)\n";
    a2a = {{"tokens", a.tokens},
           {"dest_nodes_per_token", a.dest_nodes_per_token},
           {"remote_nodes_per_token", a.remote_nodes_per_token},
           {"dest_gpus_per_token", a.dest_gpus_per_token},
           {"nvlink_copies_per_token", a.nvlink_sends_per_token},
           {"dispatch_ib_bytes", a.dispatch_ib_bytes()},
           {"dispatch_nvlink_bytes", a.dispatch_nvlink_bytes()},
           {"combine_ib_bytes", a.combine_ib_bytes()},
           {"combine_nvlink_bytes", a.combine_nvlink_bytes()}};
    break;
  }
  if (!a2a.is_null()) j["all_to_all_per_moe_layer_per_micro_batch"] = a2a;

  const auto mem = memory_per_rank(s, part);
  t += "Memory per GPU at peak, by pipeline rank (GB; activations = in-flight micro-batches x kept bytes)\n";
  t += strprintf("  %4s %-9s %-9s %8s %8s %8s %9s %11s %8s\n", "rank", "stages", "in-flight", "params(B)",
           "weights", "grads", "optimizer", "activations", "total");
  nlohmann::json jm = nlohmann::json::array();
  const RankMemory* worst = &mem.front();
  for (const auto& m : mem) {
    std::string st, fl;
    for (size_t i = 0; i < m.stages.size(); ++i) {
      st += (i ? "," : "") + std::to_string(m.stages[i]);
      fl += (i ? "," : "") + std::to_string(m.in_flight[i]);
    }
    t += strprintf("  %4lld %-9s %-9s %8.2f %8.1f %8.1f %9.1f %11.1f %8.1f\n", (long long)m.rank, st.c_str(),
             fl.c_str(), m.params / 1e9, m.weights / 1e9, m.grads / 1e9, m.optimizer / 1e9,
             m.activations / 1e9, m.total() / 1e9);
    jm.push_back({{"rank", m.rank}, {"stages", m.stages}, {"in_flight", m.in_flight}, {"params", m.params},
                  {"weights_bytes", m.weights}, {"grads_bytes", m.grads}, {"optimizer_bytes", m.optimizer},
                  {"activations_bytes", m.activations}, {"total_bytes", m.total()}});
    if (m.total() > worst->total()) worst = &m;
  }
  t += strprintf("  busiest GPU: rank %lld with %.1f GB of %.0f GB HBM (communication buffers not counted)\n",
           (long long)worst->rank, worst->total() / 1e9, s.cluster.gpu.hbm_gbytes);
  j["scenario"] = s.name;
  j["gpus"] = s.gpus;
  j["plan"] = {{"pp", s.plan.pp}, {"dp", s.plan.dp}, {"ep", s.plan.ep}, {"tp", s.plan.tp},
               {"schedule", to_string(s.schedule.kind)}, {"micro_batches", C}, {"stages", s.stages()}};
  j["memory_per_rank"] = jm;
  j["memory_peak_bytes"] = worst->total();
  nlohmann::json js = nlohmann::json::array();
  for (const auto& st : part.stages)
    js.push_back({{"layers", st.layers}, {"train_flops", st.cost}, {"kept_bytes", st.kept_bytes},
                  {"params", st.params}});
  j["stages"] = js;
}

enum class CardType { scenario, model, cluster, unknown };

CardType detect(const YAML::Node& n) {
  if (!n.IsMap()) return CardType::unknown;
  if (n["hidden_size"]) return CardType::model;
  if (n["plan"] || n["model"]) return CardType::scenario;
  if (n["gpus_per_node"] || n["gpu"]) return CardType::cluster;
  return CardType::unknown;
}

}  // namespace

Result<nlohmann::json> describe(const DescribeOptions& o, std::string& text) {
  return catch_input_errors([&]() -> nlohmann::json {
    nlohmann::json j;
    const YAML::Node node = parse_card_file(o.path);
    const CardType type = detect(node);
    if (o.seq_len != 0 && (type == CardType::scenario || type == CardType::cluster))
      throw_input_error("<command line>", "--seq-len",
                        "applies to a bare model card only; a scenario sets its own (--set batch.seq_len=N)");
    switch (type) {
      case CardType::scenario: {
        auto s = load_scenario(o.path, o.overrides);
        if (!s) throw InputException(s.error());
        describe_scenario(s.value(), o, text, j);
        break;
      }
      case CardType::model: {
        if (!o.overrides.empty())
          throw_input_error("<command line>", "--set", "--set applies to scenarios only");
        const ModelCard m = read_model_card(node, o.path);
        const Workload w = build_workload(m, MicroBatch{1, o.seq_len != 0 ? o.seq_len : 4096}, PrecisionRecipe{}, RecomputePolicy{},
                                          ExpertLayout{});
        describe_model(w, text, j);
        if (o.ops) describe_ops(w, text);
        break;
      }
      case CardType::cluster: {
        if (!o.overrides.empty())
          throw_input_error("<command line>", "--set", "--set applies to scenarios only");
        describe_cluster(read_cluster_card(node, o.path), text, j);
        break;
      }
      case CardType::unknown:
        throw_input_error(o.path, "", "not a scenario, model card or cluster card (no 'plan', "
                                      "'hidden_size' or 'gpus_per_node' key)");
    }
    return j;
  });
}

}  // namespace tandem
