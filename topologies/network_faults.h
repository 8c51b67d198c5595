// NetworkFaults: broken or degraded parts of a cluster's fabric, for what-ifs (a scenario's
// `faults:`); Topology routes around them (topologies/topology.h).
#pragma once

#include <vector>

namespace tandem {

// GPUs are global indices; a GPU's NICs are all the NICs attached to it.
struct NetworkFaults {
  std::vector<int> failed_planes;  // multi-plane fabrics: planes whose switches are down
  std::vector<int> failed_nics;    // GPUs whose NICs are down
  std::vector<int> failed_spines;  // spine switches down, numbered plane * spines_per_plane + spine
  std::vector<int> slow_nics;      // GPUs whose NICs run at nic_speed of their line rate
  double nic_speed = 1;
  bool any() const {
    return !failed_planes.empty() || !failed_nics.empty() || !failed_spines.empty() || (!slow_nics.empty() && nic_speed != 1);
  }
};

}  // namespace tandem
