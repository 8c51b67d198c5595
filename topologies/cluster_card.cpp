#include "topologies/cluster_card.h"

#include <filesystem>

namespace tandem {

namespace {

// Bounds on the size of a cluster, so that the topology graph stays reasonable (a few million
// directed links at most). The largest clusters built today are around 100K GPUs.
constexpr int64_t kMaxNodes = 16384;
constexpr int64_t kMaxGpusPerNode = 72;  // NVL72 rack as one NVLink domain
constexpr int64_t kMaxNicsPerGpu = 8;
constexpr int64_t kMaxGpus = 131072;
constexpr int64_t kMaxNics = 262144;

GpuSpec read_gpu(CardReader r) {
  GpuSpec g;
  g.name = r.text("name");
  g.sms = r.integer("sms", 1, 1024);
  g.hbm_gbytes = r.number("hbm_gbytes", 1, 100000);
  g.hbm_tbytes_s = r.number("hbm_tbytes_s", 0.01, 1000);
  g.bf16_tflops = r.number("bf16_tflops", 0.1, 1e6);
  g.fp8_tflops = r.number("fp8_tflops", 0, 1e6);  // 0: no FP8 tensor cores
  g.fp32_tflops = r.number("fp32_tflops", 0.01, 1e6);
  r.finish();
  return g;
}

FabricSpec read_fabric(CardReader r, const ClusterCard& c) {
  FabricSpec f;
  std::string topo = r.choice("topology", {"multi_plane_fat_tree", "fat_tree"});
  f.topology = topo == "fat_tree" ? FabricTopology::fat_tree : FabricTopology::multi_plane_fat_tree;

  const int64_t nics_per_node = c.nics_per_node();
  if (f.topology == FabricTopology::fat_tree) {
    f.planes = r.integer_or("planes", 1, 1, 1);
  } else {
    f.planes = r.integer("planes", 1, nics_per_node);
    if (f.planes != 1 && f.planes != nics_per_node)
      r.fail("planes", "a multi-plane fat-tree has one plane per NIC of a node (gpus_per_node × "
                       "nics_per_gpu = " + std::to_string(nics_per_node) +
                           ") or a single plane; got " + std::to_string(f.planes));
  }

  f.switch_radix = r.integer("switch_radix", 4, 1024);
  if (f.switch_radix % 2 != 0)
    r.fail("switch_radix", "must be even (half the ports go down, half up), got " +
                               std::to_string(f.switch_radix));
  const int64_t half = f.switch_radix / 2;
  f.spines_per_plane = r.integer_or("spines_per_plane", half, 1, half);

  f.latency_same_leaf_us = r.number("latency_same_leaf_us", 0, 1000);
  f.latency_cross_leaf_us = r.number("latency_cross_leaf_us", 0, 1000);
  if (f.latency_cross_leaf_us < f.latency_same_leaf_us)
    r.fail("latency_cross_leaf_us",
           "must be at least latency_same_leaf_us (" + format_number(f.latency_same_leaf_us) +
               "): a cross-leaf path is the same-leaf path plus two switch hops; got " +
               format_number(f.latency_cross_leaf_us));
  r.finish();
  return f;
}

}  // namespace

const char* to_string(FabricTopology t) {
  switch (t) {
    case FabricTopology::multi_plane_fat_tree: return "multi_plane_fat_tree";
    case FabricTopology::fat_tree: return "fat_tree";
  }
  return "?";
}

ClusterCard read_cluster_card(const YAML::Node& node, const std::string& file,
                              std::shared_ptr<const OriginMap> origins) {
  CardReader r(node, file, "", std::move(origins));
  ClusterCard c;
  c.source_file = file;
  c.name = r.text_or("name", std::filesystem::path(file).stem().string());
  c.description = r.text_or("description", "");

  c.nodes = r.integer("nodes", 1, kMaxNodes);
  c.gpus_per_node = r.integer("gpus_per_node", 1, kMaxGpusPerNode);
  if (c.gpus() > kMaxGpus)
    r.fail("nodes", std::to_string(c.nodes) + " nodes × " + std::to_string(c.gpus_per_node) +
                        " GPUs = " + std::to_string(c.gpus()) + " GPUs, more than the " +
                        std::to_string(kMaxGpus) + " tandem models");
  c.gpu = read_gpu(r.section("gpu"));

  c.nvlink_gbytes_s = r.number("nvlink_gbytes_s", 0.1, 100000);
  c.nvlink_nominal_gbytes_s = r.number("nvlink_nominal_gbytes_s", 0.1, 200000);
  if (c.nvlink_gbytes_s > c.nvlink_nominal_gbytes_s / 2)
    r.fail("nvlink_gbytes_s",
           "achievable per-direction bandwidth " + format_number(c.nvlink_gbytes_s) +
               " exceeds half the bidirectional nominal nvlink_nominal_gbytes_s (" +
               format_number(c.nvlink_nominal_gbytes_s) + " / 2)");
  c.nvlink_latency_us = r.number("nvlink_latency_us", 0, 1000);

  c.nics_per_gpu = r.integer("nics_per_gpu", 1, kMaxNicsPerGpu);
  if (c.nics() > kMaxNics)
    r.fail("nics_per_gpu", std::to_string(c.nics()) + " NICs in the cluster, more than the " +
                               std::to_string(kMaxNics) + " tandem models");
  c.nic_gbps = r.number("nic_gbps", 1, 100000);

  c.fabric = read_fabric(r.section("fabric"), c);

  // A 2-layer fat-tree of radix R: each leaf has R/2 NIC ports, each spine one port per leaf,
  // so a plane holds at most R leaves × R/2 = R²/2 NICs.
  const int64_t per_plane = c.nics() / c.fabric.planes;
  const int64_t capacity = c.fabric.switch_radix * c.fabric.switch_radix / 2;
  if (per_plane > capacity)
    r.fail("nodes", std::to_string(c.nodes) + " nodes put " + std::to_string(per_plane) +
                        " NICs on each fabric plane, but a 2-layer fat-tree of " +
                        std::to_string(c.fabric.switch_radix) + "-port switches holds at most " +
                        std::to_string(capacity) +
                        " (raise fabric.switch_radix or fabric.planes, or use fewer nodes)");

  c.price_per_gpu_hour = r.number("price_per_gpu_hour", 0, 10000);
  r.finish();
  return c;
}

Result<ClusterCard> load_cluster_card(const std::string& path) {
  return catch_input_errors([&] { return read_cluster_card(parse_card_file(path), path); });
}

}  // namespace tandem
