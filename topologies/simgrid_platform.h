// The SimGrid platform of a cluster card: one SimGrid host per GPU, one split-duplex SimGrid link
// per physical link of the Topology, and routes that are exactly Topology::route.
//
// Contract of building a platform (SimgridPlatform's constructor and build_simgrid_platform):
//  * Call it once per simgrid::s4u::Engine, after constructing the Engine and before anything
//    else touches its platform (no load_platform, no other zone, no actor, no Engine::run).
//    Otherwise it throws std::logic_error. SimGrid 3.32 allows only one Engine per process.
//  * It first configures SimGrid for an HPC fabric (reference/simgrid-notes.md §2), through
//    Engine::set_config, which only works before the first zone exists:
//      network/model:CM02        no latency or bandwidth correction factors (the default LV08
//                                multiplies latencies by 13.01 and bandwidths by 0.97)
//      network/crosstraffic:0    a flow takes nothing from the reverse direction of its links
//                                (the default charges it 5 % of its rate there)
//      network/TCP-gamma:0       no TCP window cap of gamma / (2 * latency) per flow
//      network/loopback-bw:1e18  a transfer from a GPU to itself is free, as its empty
//                                Topology::route says (see Routes below)
//    and quiets SimGrid's logging: xbt_cfg.thres:warning (no INFO line per setting). Logs of
//    other categories are left as they are (--log flags given to the Engine still apply).
//  * Hosts: "gpu<i>" for GPU i, in GPU order, each with one core of host_speed_flops FLOP/s
//    (1 by default: a placeholder for simulators that time compute themselves).
//  * Links: every physical link l of the Topology becomes one SimGrid SPLITDUPLEX link named
//    "<tail>-<head>" after the Topology's vertex names of its up direction (e.g.
//    "gpu17-nvswitch2", "gpu17-nic17", "nic17-leaf0.1", "leaf0.1-spine5.1"), with the link's
//    bandwidth (bytes/s) and latency (s). Its SimGrid "_UP" link is the Topology's directed link
//    2l (away from the GPU), its "_DOWN" link the directed link 2l+1.
//  * Routes: all hosts are in one custom netzone (the root zone). Its routing asks
//    Topology::route(src, dst) on demand and maps each directed link to the SimGrid link of that
//    direction; the route's latency is the Topology route's latency. Nothing is tabulated: build
//    time and memory grow with hosts + links only (2048 GPUs: well under a second).
//    Exception: from a GPU to itself Topology::route is empty, and SimGrid's CM02 aborts on a
//    comm with no link and no latency, so that route is CM02's implicit "__loopback__" link (one
//    link for all hosts, latency 0, bandwidth 1e18 B/s as configured above: free in practice).
//  * The zone keeps its own copy of the Topology; the Topology given need not outlive the call.
//    The SimGrid objects (zone, hosts, links) belong to the Engine and die with it;
//    SimgridPlatform only holds pointers to them and must not be used after the Engine is gone.
#pragma once

#include <string>
#include <vector>

#include <simgrid/forward.h>

#include "common/signed_index.h"
#include "topologies/topology.h"

namespace tandem {

struct SimgridPlatformOptions {
  // On a multi-plane fabric a GPU can reach another node's GPUs with a different local index
  // (another plane) only through a GPU of that node on its own plane, which forwards over
  // NVLink. true: the platform routes such cross-plane pairs as Topology::route does
  // (IB to the relay GPU, then the relay's NVLink up and the destination's NVLink down), so
  // any GPU can send to any GPU. false: there is no route between cross-plane pairs; a
  // simulator that forwards explicitly (a separate IB transfer to the relay, then an NVLink
  // transfer, as DeepEP does) uses this to make sure no transfer bypasses its forwarding.
  // Host::route_to between such a pair (from main or from an actor) throws std::logic_error;
  // a comm between them ends the process with that message (xbt_die), because SimGrid 3.32
  // cannot recover from a routing error inside a comm (it hands the exception to the sending
  // actor, then segfaults when that actor ends). Single-plane fabrics have no cross-plane
  // pairs: the option changes nothing there.
  bool multi_plane_forwarding = true;
  // Cores per GPU host. A simulator that times a GPU's compute stream and its comm stream with
  // concurrent execs gives each GPU two cores, so that the two never share one.
  int host_cores = 1;
};

class SimgridPlatform {
 public:
  // Configures the engine and builds the platform (see the contract above). Throws
  // std::logic_error if the engine already has a platform, std::invalid_argument if
  // host_speed_flops is not positive.
  SimgridPlatform(simgrid::s4u::Engine& engine, const Topology& topo, double host_speed_flops = 1.0,
                  const SimgridPlatformOptions& options = {});

  int num_gpus() const { return static_cast<int>(hosts_.size()); }
  // The GPU hosts, in GPU order.
  const std::vector<simgrid::s4u::Host*>& hosts() const { return hosts_; }
  simgrid::s4u::Host* host(int gpu) const { return hosts_.at(idx(gpu)); }
  // GPU index of one of this platform's hosts (-1 for any other host).
  int gpu_of(const simgrid::s4u::Host* host) const;

  // The SimGrid link of a Topology directed link id (2l: "<name>_UP", 2l+1: "<name>_DOWN"), e.g.
  // to read its load or to trace it. Throws std::out_of_range on a bad id.
  simgrid::s4u::Link* link(int directed_id) const { return links_.at(idx(directed_id)); }
  int num_links() const { return static_cast<int>(links_.size()); }  // directed
  // Name of the SimGrid split-duplex link of Topology physical link `physical`.
  static std::string link_name(const Topology& topo, int physical);

  simgrid::s4u::NetZone* zone() const { return zone_; }
  const SimgridPlatformOptions& options() const { return options_; }

 private:
  std::vector<simgrid::s4u::Host*> hosts_;  // by GPU
  std::vector<simgrid::s4u::Link*> links_;  // by Topology directed link id
  simgrid::s4u::NetZone* zone_ = nullptr;
  SimgridPlatformOptions options_;
  unsigned long first_host_id_ = 0;  // NetPoint id of gpu0 in the zone (hosts are contiguous)
};

// Shorthand: builds a SimgridPlatform with default options and returns its GPU hosts in GPU
// order (the SimGrid objects live on in the engine).
std::vector<simgrid::s4u::Host*> build_simgrid_platform(simgrid::s4u::Engine& e, const Topology& topo,
                                                        double host_speed_flops = 1.0);

}  // namespace tandem
