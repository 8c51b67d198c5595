#include "scenarios/scenario.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "common/card_overrides.h"
#include "common/signed_index.h"
#include "scenarios/memory.h"
#include "scenarios/stage_partition.h"
#include "topologies/topology.h"

namespace tandem {

namespace fs = std::filesystem;

const char* to_string(RoutingModel m) {
  switch (m) {
    case RoutingModel::balanced: return "balanced";
    case RoutingModel::skewed: return "skewed";
    case RoutingModel::measured: return "measured";
  }
  return "?";
}

namespace {

constexpr int64_t kMaxGpus = 1 << 20;

// A card reference: `model: path` or `model: {card: path, key: override, ...}`.
bool is_card_section(const std::string& name) { return name == "model" || name == "cluster"; }

// Applies one "--set a.b.c=value" to the scenario tree (a scalar `model:` or `cluster:` on the
// way becomes {card: path} first, so a --set can reach into a referenced card).
void apply_override(YAML::Node& root, const std::string& text, const std::string& source, OriginMap& origins) {
  apply_set(root, text, source, origins, is_card_section);
}

// Resolves `model:` or `cluster:` to the card's merged node, its file, and the overrides' origins.
struct CardRef {
  YAML::Node node;
  std::string file;
  std::shared_ptr<OriginMap> origins = std::make_shared<OriginMap>();
};

CardRef resolve_card(const YAML::Node& root, const std::string& section, const std::string& file,
                     const OriginMap& scenario_origins) {
  const YAML::Node ref = find_child(root, section);
  if (!ref.IsDefined() || ref.IsNull()) throw_input_error(file, section, "missing (required)");
  std::string card_path;
  std::string path_key = section;
  YAML::Node overrides(YAML::NodeType::Map);
  if (ref.IsScalar()) {
    card_path = ref.Scalar();
  } else if (ref.IsMap()) {
    path_key = section + ".card";
    const YAML::Node c = find_child(ref, "card");
    if (!c.IsDefined() || c.IsNull()) throw_input_error(file, path_key, "missing (required)");
    if (!c.IsScalar()) throw_input_error(file, path_key, "expected a card file path");
    card_path = c.Scalar();
    for (auto it = ref.begin(); it != ref.end(); ++it)
      if (it->first.IsScalar() && it->first.Scalar() != "card") overrides[it->first.Scalar()] = it->second;
  } else {
    throw_input_error(file, section, "expected a card file path or a map with 'card:'");
  }
  if (card_path.empty()) throw_input_error(file, path_key, "must not be empty");
  fs::path p(card_path);
  if (p.is_relative()) p = fs::path(file).parent_path() / p;
  CardRef out;
  out.file = p.lexically_normal().string();
  std::error_code ec;
  if (!fs::is_regular_file(out.file, ec))
    throw_input_error(file, path_key, "no card file at '" + out.file + "'");
  out.node = parse_card_file(out.file);
  if (!out.node.IsMap()) throw_input_error(out.file, "", "expected a map of keys");
  // Overrides written in the scenario file are reported there; those from --set, as --set.
  for (const auto& [k, origin] : scenario_origins)
    if (k.rfind(section + ".", 0) == 0) (*out.origins)[k.substr(section.size() + 1)] = origin;
  merge_into(out.node, overrides, "", ValueOrigin{file, section}, *out.origins);
  return out;
}

// What one task of the Program costs in memory on its way through a command: the Task itself
// (kind, chunk, dependencies), its schedule slot, the simulator's activity, the trace event it
// leaves and the report's accounting of it. Measured on the default scenario: simulate's peak
// resident memory grows by ~2.2 KB per task of check_program_size's estimate (264 MB at 120
// micro-batches per pipeline, 824 MB at 480); about twice that, for headroom.
constexpr double kBytesPerTask = 4096;

// Memory this process may count on: half the machine's (the other half: the workload, SimGrid,
// the libraries, the OS), less when an address-space limit (ulimit -v) or a container's memory
// limit (cgroup v2 memory.max) is lower.
double memory_for_tasks() {
  double bytes = static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
  rlimit limit{};
  if (::getrlimit(RLIMIT_AS, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
    bytes = std::min(bytes, static_cast<double>(limit.rlim_cur));
  std::ifstream cgroup("/sys/fs/cgroup/memory.max");  // "max" when unlimited: not a number
  double container = 0;
  if (cgroup >> container && container > 0) bytes = std::min(bytes, container);
  return bytes / 2;
}

// Refuses a step whose Program could not be held: a batch is bounded by its type (2^30
// sequences), but the tasks of its step grow with the micro-batches, and building them would end
// in bad_alloc. An upper estimate of the Program's tasks (all pipeline ranks): every micro-batch
// passes every block of the model forward and backward, at most 10 tasks per block (attention,
// dispatch, MLP, combine; their B and W parts; the loss), plus 4 pipeline sends and receives per
// stage.
void check_program_size(const Scenario& s, CardReader& batch) {
  const double blocks = static_cast<double>(s.model.num_hidden_layers + s.model.num_nextn_predict_layers + 2);
  const double tasks = static_cast<double>(s.micro_batches()) * (10 * blocks + 4 * static_cast<double>(s.stages()));
  const double most = std::floor(memory_for_tasks() / kBytesPerTask);
  if (tasks <= most) return;
  char buf[320];
  std::snprintf(buf, sizeof buf,
                "the step would have about %.3g tasks (%lld micro-batches per pipeline), above the %.3g this "
                "machine's memory allows (%.0f GB at %.0f bytes a task): use fewer sequences or larger micro-batches",
                tasks, static_cast<long long>(s.micro_batches()), most, most * kBytesPerTask / 1e9, kBytesPerTask);
  batch.fail("global_sequences", buf);
}

// The physics every divisor of the cost model needs. The cluster card's ranges keep each peak and
// bandwidth it divides by positive (GPU TFLOP/s, HBM, NVLink, NIC) and each latency >= 0; one
// figure may be 0 by design: fp8_tflops, a GPU without FP8 tensor cores. Such a GPU cannot run
// the FP8 recipe (its GEMMs would cost nothing), so the scenario must say bf16.
void check_physics(const Scenario& s, CardReader& r) {
  if (s.precision.fp8 && !(s.cluster.gpu.fp8_tflops > 0))
    r.fail("precision.recipe", "fp8_block needs FP8 tensor cores, but cluster.gpu.fp8_tflops is 0 (GPU '" +
                                   s.cluster.gpu.name + "'); set precision.recipe: bf16");
}

Dtype wire_dtype(CardReader& r, const std::string& key, const std::string& fallback) {
  const std::string d = r.choice_or(key, fallback, {"fp8", "bf16"});
  return d == "fp8" ? Dtype::fp8_e4m3 : Dtype::bf16;
}

// gpus: how many of the cluster's GPUs the job uses (whole nodes).
void read_gpus(CardReader& r, Scenario& s) {
  s.gpus = r.integer_or("gpus", s.cluster.gpus(), 1, kMaxGpus);
  if (s.gpus > s.cluster.gpus())
    r.fail("gpus", std::to_string(s.gpus) + " GPUs asked, cluster card '" + s.cluster.name +
                       "' has " + std::to_string(s.cluster.gpus()));
  if (s.gpus > s.cluster.gpus_per_node && s.gpus % s.cluster.gpus_per_node != 0)
    r.fail("gpus", "must be whole nodes of " + std::to_string(s.cluster.gpus_per_node) + " GPUs, got " +
                       std::to_string(s.gpus));
}

// plan: pp, tp, ep, ZeRO and the data-parallel degree they leave; ep must suit the experts,
// the replicas and the nodes.
void read_plan(CardReader& plan, Scenario& s) {
  s.plan.pp = plan.integer("pp", 1, 4096);
  s.plan.tp = plan.integer_or("tp", 1, 1, 1);
  s.plan.ep = plan.integer_or("ep", 1, 1, 65536);
  s.plan.zero_stage = plan.integer_or("zero_stage", 1, 0, 1);
  s.plan.dp_overlap = plan.boolean_or("dp_overlap", false);
  if (s.gpus % (s.plan.pp * s.plan.tp) != 0)
    plan.fail("pp", "GPUs (" + std::to_string(s.gpus) + ") are not a whole number of pipelines of " +
                        std::to_string(s.plan.pp) + " ranks: pp x dp must equal the GPU count");
  s.plan.dp = s.gpus / (s.plan.pp * s.plan.tp);
  // Optional: a check of the GPU count's split, which the plan's other keys already fix.
  if (const auto given = plan.optional_integer("dp", 1, kMaxGpus)) {
    const int64_t dp = *given;
    if (dp != s.plan.dp)
      plan.fail("dp", "pp x dp = " + std::to_string(s.plan.pp * dp) + " does not match the " +
                          std::to_string(s.gpus) + " GPUs (dp would be " + std::to_string(s.plan.dp) + ")");
  }
  const int64_t E = s.model.n_routed_experts;
  if (E == 0 && s.plan.ep != 1) plan.fail("ep", "the model has no routed experts: ep must be 1");
  if (E > 0 && E % s.plan.ep != 0)
    plan.fail("ep", "must divide the " + std::to_string(E) + " routed experts, got " +
                        std::to_string(s.plan.ep));
  if (s.plan.dp % s.plan.ep != 0)
    plan.fail("ep", "expert-parallel groups are formed across data-parallel replicas: ep (" +
                        std::to_string(s.plan.ep) + ") must divide dp (" + std::to_string(s.plan.dp) + ")");
  const int64_t gpn = s.cluster.gpus_per_node;
  if (s.plan.ep > gpn ? s.plan.ep % gpn != 0 : gpn % s.plan.ep != 0)
    plan.fail("ep", "an EP group must be whole nodes or a divisor of a node (" + std::to_string(gpn) +
                        " GPUs), got " + std::to_string(s.plan.ep));
}

// schedule: the pipeline schedule and an optional stage partition (its rules are checked once the
// batch is known: check_schedule_rules).
void read_schedule(CardReader& sched, Scenario& s) {
  s.schedule.kind = *schedule_kind_named(sched.choice("kind", schedule_names()));
  sched.read_whole("stage_layers", "list of whole numbers: layers per pipeline stage (absent: balanced by cost)");
  if (sched.has("stage_layers")) s.schedule.stage_layers = sched.integer_list("stage_layers", 0, 4096);
}

// batch: sequences per step, their length and the micro-batch size; the step must split into
// micro-batches over dp.
void read_batch(CardReader& batch, Scenario& s) {
  s.batch.global_sequences = batch.integer("global_sequences", 1, int64_t{1} << 30);
  s.batch.seq_len = batch.integer("seq_len", 1, int64_t{1} << 20);
  s.batch.micro_batch_sequences = batch.integer_or("micro_batch_sequences", 1, 1, int64_t{1} << 20);
  if (s.batch.seq_len > s.model.max_position_embeddings)
    batch.fail("seq_len", "exceeds the model's max_position_embeddings (" +
                              std::to_string(s.model.max_position_embeddings) + ")");
  const int64_t per_step = s.plan.dp * s.batch.micro_batch_sequences;
  if (s.batch.global_sequences % per_step != 0)
    batch.fail("global_sequences", std::to_string(s.batch.global_sequences) +
                                       " sequences do not split into micro-batches of " +
                                       std::to_string(s.batch.micro_batch_sequences) + " over dp " +
                                       std::to_string(s.plan.dp));
}

// The schedule's rules on pp and the micro-batch count (blamed on plan.pp when the ranks break
// them, else on schedule.kind), the optional micro_batches check, and whether the layers split
// into that many stages.
void check_schedule_rules(CardReader& plan, CardReader& sched, const Scenario& s) {
  const int64_t C = s.micro_batches();
  // Optional: a check of the count the batch keys already fix.
  if (const auto given = sched.optional_integer("micro_batches", 1, int64_t{1} << 30); given && *given != C)
    sched.fail("micro_batches", "the batch gives " + std::to_string(C) +
                                    " micro-batches per pipeline (global_sequences / (dp x micro_batch_sequences))");
  const int64_t P = s.plan.pp;
  if (const auto broken = broken_rule(s.schedule.kind, P, C, "pp")) {
    if (broken->on_ranks) plan.fail("pp", broken->need + ", got " + std::to_string(P));
    sched.fail("kind", broken->need + ", the batch gives " + std::to_string(C));
  }
  if (s.stages() > max_stages(s.model))
    plan.fail("pp", std::to_string(s.model.num_hidden_layers) + " layers cannot be split into " +
                        std::to_string(s.stages()) + " pipeline stages (at most " +
                        std::to_string(max_stages(s.model)) + ")");
}

// precision: the FP8 recipe (tiles, blocks, scales) or BF16, and the optimizer moments' type.
void read_precision(CardReader& r, Scenario& s) {
  if (auto prec = r.optional_section("precision")) {
    const std::string recipe = prec->choice_or("recipe", "fp8_block", {"fp8_block", "bf16"});
    s.precision.fp8 = recipe == "fp8_block";
    s.precision.act_tile = prec->integer_or("act_tile", 128, 16, 1024);
    s.precision.weight_block = prec->integer_or("weight_block", 128, 16, 1024);
    s.precision.pow2_scales = prec->boolean_or("pow2_scales", true);
    const std::string mom = prec->choice_or("moments", "bf16", {"bf16", "fp32"});
    s.precision.moments = mom == "bf16" ? Dtype::bf16 : Dtype::fp32;
    prec->finish();
  }
}

// recompute: what backward recomputes instead of keeping.
void read_recompute(CardReader& r, Scenario& s) {
  if (auto rc = r.optional_section("recompute")) {
    s.recompute.rmsnorm = rc->boolean_or("rmsnorm", true);
    s.recompute.mla_up_projection = rc->boolean_or("mla_up_projection", true);
    s.recompute.swiglu = rc->boolean_or("swiglu", true);
    s.recompute.fp8_activation_cache = rc->boolean_or("fp8_activation_cache", true);
    rc->finish();
  }
}

// comm: SMs held by the all-to-alls, the node limit, the MoE wire formats.
void read_comm(CardReader& r, Scenario& s) {
  const int64_t E = s.model.n_routed_experts;
  s.comm.node_limit = E > 0 ? s.model.topk_group : 0;
  s.precision.fp8_dispatch = s.precision.fp8;
  if (auto comm = r.optional_section("comm")) {
    s.comm.sms = comm->integer_or("sms", 20, 0, s.cluster.gpu.sms - 1);
    if (E > 0) {
      s.comm.node_limit = comm->integer_or("node_limit", s.model.topk_group, 1, s.model.n_group);
    } else {
      comm->ignore("node_limit");
    }
    s.precision.fp8_dispatch = wire_dtype(*comm, "dispatch_dtype", s.precision.fp8 ? "fp8" : "bf16") == Dtype::fp8_e4m3;
    if (s.precision.fp8_dispatch && !s.precision.fp8)
      comm->fail("dispatch_dtype", "FP8 dispatch needs the fp8_block precision recipe");
    if (wire_dtype(*comm, "combine_dtype", "bf16") != Dtype::bf16)
      comm->fail("combine_dtype", "an FP8 combine is not modelled: the simulator's MoE layer combines in BF16, as "
                                  "DeepSeek-V3 does");
    comm->finish();
  }
  if (E > 0 && s.plan.ep > 1 && s.comm.sms < 1)
    r.fail("comm.sms", "expert-parallel all-to-alls need SMs of their own (DeepSeek-V3 gives them 20), got 0");
}

// calibration: a file or a list of them, relative to the scenario.
void read_calibration(CardReader& r, Scenario& s, const std::string& path) {
  if (r.has("calibration")) {
    const YAML::Node list = r.node()["calibration"];
    std::vector<std::string> files;
    if (list.IsScalar()) files.push_back(r.text("calibration"));
    else if (list.IsSequence()) {
      for (size_t i = 0; i < list.size(); ++i) {
        if (!list[i].IsScalar()) r.fail("calibration[" + std::to_string(i) + "]", "expected a file path");
        files.push_back(list[i].as<std::string>());
      }
    } else {
      r.fail("calibration", "expected a file path or a list of them");
    }
    for (size_t i = 0; i < files.size(); ++i) {
      const fs::path f = fs::path(files[i]).is_absolute() ? fs::path(files[i]) : fs::path(path).parent_path() / files[i];
      std::error_code ec;
      if (!fs::is_regular_file(f, ec))
        r.fail(list.IsScalar() ? "calibration" : "calibration[" + std::to_string(i) + "]", "no such file: " + f.string());
      s.calibration.push_back(f.lexically_normal().string());
    }
  }
  r.read_whole("calibration", "a calibration file or a list of them");
}

// routing: how tokens pick experts (balanced, skewed, or a measured histogram replayed).
void read_routing(CardReader& r, Scenario& s, const std::string& path) {
  if (auto rt = r.optional_section("routing")) {
    const std::string model = rt->choice_or("model", "balanced", {"balanced", "skewed", "measured"});
    s.routing.model = model == "skewed"     ? RoutingModel::skewed
                      : model == "measured" ? RoutingModel::measured
                                            : RoutingModel::balanced;
    if (s.routing.model == RoutingModel::skewed) {
      if (!rt->has("skew")) rt->fail("skew", "skewed routing needs its spread (e.g. skew: 0.5; 0 is balanced)");
      s.routing.skew = rt->number("skew", 0.0, 4.0);
    } else if (rt->has("skew")) {
      rt->fail("skew", "applies to 'model: skewed' only");
    }
    rt->read_whole("histogram", "CSV file `layer,expert,tokens` (model: measured only; path relative to the scenario)");
    if (s.routing.model == RoutingModel::measured) {
      if (!rt->has("histogram"))
        rt->fail("histogram", "measured routing needs its histogram: a CSV file 'layer,expert,tokens' (path relative to the scenario)");
      const YAML::Node n = rt->node()["histogram"];
      if (!n.IsScalar()) rt->fail("histogram", "expected a file path");
      const std::string given = n.Scalar();
      if (given.empty()) rt->fail("histogram", "must not be empty");
      const fs::path f = fs::path(given).is_absolute() ? fs::path(given) : fs::path(path).parent_path() / given;
      s.routing.histogram_file = f.lexically_normal().string();
      std::error_code ec;
      if (!fs::exists(s.routing.histogram_file, ec)) rt->fail("histogram", "no such file: " + s.routing.histogram_file);
      Result<RoutingHistogram> h = load_routing_histogram(s.routing.histogram_file, s.model);
      if (!h) throw InputException(h.error());
      s.routing.histogram = std::make_shared<const RoutingHistogram>(std::move(h.value()));
    } else if (rt->has("histogram")) {
      rt->fail("histogram", "applies to 'model: measured' only");
    }
    s.routing.seed = static_cast<uint64_t>(rt->integer_or("seed", 1, 0, int64_t{1} << 62));
    s.routing.noise = rt->number_or("noise", 0.0, 0.0, 1.0);
    rt->finish();
  }
}

// faults: slow GPUs, failed or slow NICs, failed planes and spines (the routes around them must
// exist).
void read_faults(CardReader& r, Scenario& s) {
  if (auto f = r.optional_section("faults")) {
    s.faults.slow_gpus = f->integer_list_or("slow_gpus", 0, s.gpus - 1);
    s.faults.slow_fraction = f->number_or("slow_fraction", 0.0, 0.0, 1.0);
    if ((!s.faults.slow_gpus.empty() || s.faults.slow_fraction > 0) && !f->has("slow_speed"))
      f->fail("slow_speed", "slow GPUs need their speed (e.g. slow_speed: 0.8 for kernels at 80% of nominal)");
    s.faults.slow_speed = f->number_or("slow_speed", 1.0, 0.01, 1.0);
    s.faults.seed = static_cast<uint64_t>(f->integer_or("seed", 1, 0, int64_t{1} << 62));
    auto ints = [](const std::vector<int64_t>& v) { return std::vector<int>(v.begin(), v.end()); };
    NetworkFaults& net = s.faults.network;
    net.failed_planes = ints(f->integer_list_or("failed_planes", 0, s.cluster.fabric.planes - 1));
    if (!net.failed_planes.empty() && s.cluster.fabric.planes == 1)
      f->fail("failed_planes", "the fabric has a single plane: with it down no node reaches another");
    if (static_cast<int64_t>(std::set<int>(net.failed_planes.begin(), net.failed_planes.end()).size()) >= s.cluster.fabric.planes)
      f->fail("failed_planes", "every plane of the fabric would be down");
    net.failed_nics = ints(f->integer_list_or("failed_nics", 0, s.gpus - 1));
    net.failed_spines = ints(f->integer_list_or("failed_spines", 0, int64_t{1} << 24));
    net.slow_nics = ints(f->integer_list_or("slow_nics", 0, s.gpus - 1));
    if (!net.slow_nics.empty() && !f->has("nic_speed"))
      f->fail("nic_speed", "slow NICs need their speed (e.g. nic_speed: 0.5 for a NIC at half its line rate)");
    net.nic_speed = f->number_or("nic_speed", 1.0, 0.01, 1.0);
    if (net.any()) {
      // The routes around failed NICs and planes must exist (the Topology checks every pair).
      ClusterCard used = s.cluster;
      used.nodes = std::max<int64_t>(1, (s.gpus + used.gpus_per_node - 1) / used.gpus_per_node);
      try {
        const Topology check(used, net);
      } catch (const std::invalid_argument& e) {
        // The Topology's reason starts with the key it is about ("failed_spines: ..."), or is
        // about the routes the failed NICs and planes leave.
        std::string what = e.what(), key = net.failed_nics.empty() ? "failed_planes" : "failed_nics";
        for (const char* k : {"failed_planes", "failed_nics", "failed_spines", "slow_nics", "nic_speed"})
          if (what.rfind(std::string(k) + ": ", 0) == 0) key = k, what = what.substr(key.size() + 2);
        f->fail(key, what);
      }
    }
    f->finish();
  }
}

Scenario read_scenario(const std::string& path, const std::vector<std::string>& overrides, StagePartition* partition) {
  YAML::Node root = parse_card_file(path);
  if (!root.IsMap()) throw_input_error(path, "", "expected a map of keys");
  auto origins = std::make_shared<OriginMap>();
  const std::string set_source = path + " [--set]";
  for (const auto& o : overrides) apply_override(root, o, set_source, *origins);

  Scenario s;
  s.file = path;
  s.overrides = overrides;
  CardRef mref = resolve_card(root, "model", path, *origins);
  s.model = read_model_card(mref.node, mref.file, mref.origins);
  CardRef cref = resolve_card(root, "cluster", path, *origins);
  s.cluster = read_cluster_card(cref.node, cref.file, cref.origins);

  CardReader r(root, path, "", origins);
  r.read_whole("model", "section: model card keys over the card's values");
  r.read_whole("cluster", "section: cluster card keys over the card's values");
  s.name = r.text_or("name", fs::path(path).stem().string());
  s.description = r.text_or("description", "");
  read_gpus(r, s);

  CardReader plan = r.section("plan");
  read_plan(plan, s);
  plan.finish();

  CardReader sched = r.section("schedule");
  read_schedule(sched, s);
  CardReader batch = r.section("batch");
  read_batch(batch, s);
  batch.finish();
  check_schedule_rules(plan, sched, s);
  sched.finish();
  check_program_size(s, batch);

  read_precision(r, s);
  check_physics(s, r);
  read_recompute(r, s);
  read_comm(r, s);
  read_calibration(r, s, path);
  read_routing(r, s, path);
  read_faults(r, s);
  r.finish();

  // Feasibility: the layers split into stages, and the busiest GPU fits in HBM.
  const Workload w = scenario_workload(s);
  StagePartition part = scenario_partition(s, w);
  check_memory_fits(s, part);
  if (partition) *partition = std::move(part);
  return s;
}

}  // namespace

void check_memory_fits(const Scenario& s, const StagePartition& part) {
  const double hbm = s.cluster.gpu.hbm_gbytes * 1e9;
  for (const RankMemory& m : memory_per_rank(s, part)) {
    if (m.total() > hbm) {
      char buf[320];
      std::snprintf(buf, sizeof buf,
                    "the plan needs %.1f GB on pipeline rank %lld (weights %.1f, gradients %.1f, "
                    "optimizer %.1f, activations %.1f GB), above the %.0f GB of HBM of '%s'",
                    m.total() / 1e9, static_cast<long long>(m.rank), m.weights / 1e9, m.grads / 1e9,
                    m.optimizer / 1e9, m.activations / 1e9, s.cluster.gpu.hbm_gbytes,
                    s.cluster.name.c_str());
      throw_input_error(s.file, "plan", buf);
    }
  }
}

std::vector<double> FaultSpec::gpu_speed(int64_t gpus) const {
  std::vector<double> speed(idx(gpus), 1.0);
  for (int64_t g : slow_gpus)
    if (g >= 0 && g < gpus) speed[idx(g)] = slow_speed;
  if (slow_fraction > 0) {
    // A seeded draw of round(fraction x GPUs) distinct GPUs: the same seed, the same stragglers.
    std::vector<int64_t> order(idx(gpus));
    for (int64_t g = 0; g < gpus; ++g) order[idx(g)] = g;
    std::mt19937_64 rng(seed * 0x9E3779B97F4A7C15ULL + 0xFA17ULL);
    const auto n = idx(std::llround(slow_fraction * static_cast<double>(gpus)));
    for (size_t i = 0; i < n && i < order.size(); ++i) {  // partial Fisher-Yates with a portable draw
      const size_t j = i + idx(rng() % (order.size() - i));
      std::swap(order[i], order[j]);
      speed[idx(order[i])] = slow_speed;
    }
  }
  return speed;
}

Workload scenario_workload(const Scenario& s) {
  return build_workload(s.model, s.micro_batch(), s.precision, s.recompute, s.expert_layout());
}

namespace {
// An error about a key the overrides did not write (memory, a schedule rule, a card reference)
// may still be theirs: the file is named with them, so the message is about what was run.
InputError with_overrides(InputError e, const std::vector<std::string>& overrides) {
  if (overrides.empty()) return e;
  std::string with;
  for (const std::string& o : overrides) with += (with.empty() ? "" : " ") + std::string("--set ") + o;
  e.file += " [with " + with + "]";
  return e;
}
}  // namespace

void fail_scenario_key(const Scenario& s, const std::string& key, const std::string& reason) {
  for (const std::string& o : s.overrides) {
    const std::string set = o.substr(0, o.find('='));
    if (key == set || key.rfind(set + ".", 0) == 0) throw_input_error(s.file + " [--set]", key, reason);
  }
  throw InputException(with_overrides(InputError{s.file, key, reason}, s.overrides));
}

Result<Scenario> load_scenario(const std::string& path, const std::vector<std::string>& overrides, StagePartition* partition) {
  Result<Scenario> r = catch_input_errors([&] { return read_scenario(path, overrides, partition); });
  if (!r && r.error().file == path) return with_overrides(r.error(), overrides);
  return r;
}

void write_scenario_card(const std::string& path, const std::vector<std::string>& overrides, const std::string& out,
                         const std::string& header, const std::string& description) {
  YAML::Node root = parse_card_file(path);
  if (!root.IsMap()) throw_input_error(path, "", "expected a map of keys");
  OriginMap origins;
  for (const auto& o : overrides) apply_override(root, o, path + " [--set]", origins);
  namespace fs = std::filesystem;
  const fs::path from = fs::absolute(fs::path(path)).parent_path();
  const fs::path to = fs::absolute(fs::path(out)).parent_path();
  auto repoint = [&](YAML::Node n) {
    if (!n.IsScalar()) return;
    const fs::path p(n.Scalar());
    if (p.is_absolute()) return;
    n = fs::relative(fs::weakly_canonical(from / p), fs::weakly_canonical(to)).generic_string();
  };
  for (const char* section : {"model", "cluster"}) {
    YAML::Node n = root[section];
    if (n.IsScalar()) repoint(n);
    else if (n.IsMap() && n["card"]) repoint(n["card"]);
  }
  if (YAML::Node r = root["routing"]; r.IsMap() && r["histogram"]) repoint(r["histogram"]);
  if (YAML::Node c = root["calibration"]) {
    if (c.IsScalar()) repoint(c);
    else if (c.IsSequence())
      for (size_t i = 0; i < c.size(); ++i) repoint(c[i]);
  }
  if (!description.empty()) root["description"] = description;
  YAML::Emitter e;
  e << root;
  std::ofstream f(out);
  std::string comment;
  for (char ch : header) {
    comment += ch;
    if (ch == '\n') comment += "# ";
  }
  f << "# " << comment << "\n" << e.c_str() << "\n";
  if (!f) throw_input_error("<command line>", "--write-best", "cannot write '" + out + "'");
}

}  // namespace tandem
