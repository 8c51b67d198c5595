// ClusterCard: the hardware of a GPU cluster — GPU, node, NICs, fabric, price.
//
// Units are in the key names: *_gbytes_s = 10^9 bytes/s, nic_gbps = 10^9 bits/s (as NICs are
// sold), *_tflops = 10^12 FLOP/s dense, *_us = microseconds. Latencies are the end-to-end
// small-message figures a user can measure (same leaf, cross leaf, NVLink); the topology turns
// them into per-hop link latencies.
//
// Card layout and checks (see topologies/h800-2048.yaml for a commented example): every value is
// typed and range-checked so that no card can make tandem build an absurdly large graph:
//   nodes 1..16384, gpus_per_node 1..72, nics_per_gpu 1..8, at most 131072 GPUs and 262144 NICs;
//   fabric.switch_radix even, 4..1024; fabric.planes as above; fabric.spines_per_plane
//   1..radix/2; a plane must fit in a 2-layer fat-tree (at most radix*radix/2 NICs per plane);
//   nvlink_gbytes_s <= nvlink_nominal_gbytes_s / 2; latency_cross_leaf_us >= latency_same_leaf_us.
// Every peak and bandwidth the cost model divides by is positive (its range starts above 0),
// every latency >= 0; the one exception is gpu.fp8_tflops: 0 is a GPU without FP8 tensor cores,
// and a scenario on it must use the bf16 recipe (the scenario's check_physics).
// Violations are InputErrors naming the file, the dotted key and the reason.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/card_reader.h"
#include "common/input_error.h"

namespace tandem {

struct GpuSpec {
  std::string name;          // e.g. "H800 SXM5"
  int64_t sms = 0;           // streaming multiprocessors
  double hbm_gbytes = 0;     // memory capacity, 10^9 bytes
  double hbm_tbytes_s = 0;   // memory bandwidth, 10^12 bytes/s
  double bf16_tflops = 0;    // dense tensor-core peak
  double fp8_tflops = 0;     // dense tensor-core peak; 0: no FP8 tensor cores (bf16 recipe only)
  double fp32_tflops = 0;    // CUDA-core (non-tensor) peak
};

enum class FabricTopology { multi_plane_fat_tree, fat_tree };

struct FabricSpec {
  FabricTopology topology = FabricTopology::multi_plane_fat_tree;
  // multi_plane_fat_tree: planes == NICs per node, NIC i of every node on plane i (planes == 1
  // is accepted and is the same fabric as fat_tree). fat_tree: planes == 1, every NIC on it.
  int64_t planes = 1;
  int64_t switch_radix = 64;   // ports per leaf and spine switch
  // Spines per plane; each leaf has one link to every spine of its plane. Default radix/2:
  // full bisection (radix/2 down ports and radix/2 up ports per leaf). Fewer spines make the
  // fabric oversubscribed (radix/2 : spines_per_plane). Optional in the card.
  int64_t spines_per_plane = 32;
  double latency_same_leaf_us = 0;   // NIC -> leaf -> NIC, end to end
  double latency_cross_leaf_us = 0;  // NIC -> leaf -> spine -> leaf -> NIC, end to end
};

struct ClusterCard {
  std::string name;
  std::string source_file;
  std::string description;

  int64_t nodes = 0;
  int64_t gpus_per_node = 0;
  GpuSpec gpu;

  double nvlink_gbytes_s = 0;          // achievable per GPU per direction
  double nvlink_nominal_gbytes_s = 0;  // nominal, bidirectional (datasheet)
  double nvlink_latency_us = 0;        // GPU -> NVSwitch -> GPU, end to end

  int64_t nics_per_gpu = 1;
  double nic_gbps = 0;                 // line rate per NIC, 10^9 bits/s

  FabricSpec fabric;
  double price_per_gpu_hour = 0;       // USD

  int64_t gpus() const { return nodes * gpus_per_node; }
  int64_t nics_per_node() const { return gpus_per_node * nics_per_gpu; }
  int64_t nics() const { return nodes * nics_per_node(); }
  double nic_gbytes_s() const { return nic_gbps / 8.0; }
};

Result<ClusterCard> load_cluster_card(const std::string& path);
ClusterCard read_cluster_card(const YAML::Node& node, const std::string& file,
                              std::shared_ptr<const OriginMap> origins = nullptr);

const char* to_string(FabricTopology t);

}  // namespace tandem
