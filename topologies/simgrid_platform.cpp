#include "topologies/simgrid_platform.h"

#include <algorithm>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <utility>

#include <simgrid/kernel/routing/NetPoint.hpp>
#include <simgrid/kernel/routing/NetZoneImpl.hpp>
#include <simgrid/s4u/Actor.hpp>
#include <simgrid/s4u/Engine.hpp>
#include <simgrid/s4u/Host.hpp>
#include <simgrid/s4u/Link.hpp>
#include <simgrid/s4u/NetZone.hpp>
#include <xbt/asserts.h>
#include <xbt/log.h>

#include "common/signed_index.h"

namespace tandem {

namespace {

namespace sgr = simgrid::kernel::routing;
using LinkImpl = simgrid::kernel::resource::StandardLinkImpl;

// The whole cluster in one netzone whose routes are Topology::route, computed when SimGrid asks
// (once per comm, and by Host::route_to); nothing is stored per pair.
class GpuClusterZone final : public sgr::NetZoneImpl {
 public:
  GpuClusterZone(const std::string& name, const Topology& topo, bool forwarding)
      : sgr::NetZoneImpl(name), topo_(topo), forwarding_(forwarding) {}

  // Called once the hosts and links exist, before sealing: the NetPoint id of gpu0 (the GPUs'
  // NetPoints are consecutive) and the SimGrid link of every Topology directed link.
  void set_routing(unsigned long first_host_id, std::vector<LinkImpl*> links, LinkImpl* loopback) {
    first_host_id_ = first_host_id;
    links_ = std::move(links);
    loopback_ = loopback;
  }

  void get_local_route(const sgr::NetPoint* src, const sgr::NetPoint* dst, sgr::Route* into,
                       double* latency) override {
    const int a = gpu(src), b = gpu(dst);
    if (a == b) {  // CM02 refuses a comm with no link and no latency
      into->link_list_.push_back(loopback_);
      return;
    }
    const tandem::Route r = topo_.route(a, b);
    if (!forwarding_ && r.relay_gpu >= 0) no_route(a, b, r.relay_gpu);
    auto& out = into->link_list_;
    out.reserve(out.size() + r.links.size());
    for (const Link& k : r.links) out.push_back(links_[idx(k.id)]);
    if (latency != nullptr) *latency += r.latency;
  }

 private:
  int gpu(const sgr::NetPoint* p) const {
    const unsigned long i = p->id() - first_host_id_;  // wraps around below first_host_id_
    if (!p->is_host() || p->get_englobing_zone() != this ||
        i >= static_cast<unsigned long>(topo_.num_gpus()))
      throw std::logic_error("SimgridPlatform: '" + p->get_name() + "' is not a GPU host");
    return static_cast<int>(i);
  }

  // A cross-plane pair without forwarding. Inside a running simulation, in the kernel (maestro),
  // this is a comm being started: SimGrid 3.32 passes an exception from there on to the sending
  // actor but then crashes (segfault in CommImpl::cancel when that actor ends), so end the
  // process cleanly instead. Anywhere else (Host::route_to from an actor or from main) throw.
  [[noreturn]] static void no_route(int a, int b, int relay) {
    const std::string what = "SimgridPlatform: no route from gpu" + std::to_string(a) + " to gpu" +
                             std::to_string(b) +
                             ": they are on different fabric planes and multi-plane forwarding "
                             "is off (send to the relay gpu" + std::to_string(relay) +
                             " and forward over NVLink)";
    if (simulation_running && simgrid::s4u::this_actor::is_maestro()) xbt_die("%s", what.c_str());
    throw std::logic_error(what);
  }

 public:
  static inline std::atomic<bool> simulation_running{false};  // within Engine::run

 private:
  const Topology topo_;  // a copy: SimGrid owns the zone and may outlive the caller's Topology
  const bool forwarding_;
  unsigned long first_host_id_ = 0;
  std::vector<LinkImpl*> links_;  // by Topology directed link id
  LinkImpl* loopback_ = nullptr;  // the network model's implicit loopback link
};

void configure(simgrid::s4u::Engine& engine) {
  if (engine.get_netzone_root() != nullptr)
    throw std::logic_error(
        "SimgridPlatform: the SimGrid engine already has a platform (build it once per engine, "
        "before anything else)");
  static std::once_flag signals;  // one engine per process, but be safe
  std::call_once(signals, [] {
    simgrid::s4u::Engine::on_simulation_start_cb([] { GpuClusterZone::simulation_running = true; });
    simgrid::s4u::Engine::on_simulation_end_cb([] { GpuClusterZone::simulation_running = false; });
  });
  xbt_log_control_set("xbt_cfg.thres:warning");
  // Ctrl-C ends the run without SimGrid's listing of every actor (hundreds of KB at 2048 GPUs).
  simgrid::s4u::Engine::set_config("debug/verbose-exit:0");
  simgrid::s4u::Engine::set_config("network/model:CM02");
  simgrid::s4u::Engine::set_config("network/crosstraffic:0");
  simgrid::s4u::Engine::set_config("network/TCP-gamma:0");
  simgrid::s4u::Engine::set_config("network/loopback-bw:1e18");
}

}  // namespace

std::string SimgridPlatform::link_name(const Topology& topo, int physical) {
  const Link& up = topo.link(2 * physical);
  return topo.vertex_name(up.tail) + "-" + topo.vertex_name(up.head);
}

SimgridPlatform::SimgridPlatform(simgrid::s4u::Engine& engine, const Topology& topo,
                                 double host_speed_flops, const SimgridPlatformOptions& options)
    : options_(options) {
  if (!(host_speed_flops > 0))
    throw std::invalid_argument("SimgridPlatform: host speed must be positive");
  configure(engine);

  // The first zone created becomes the root zone; its constructor sets up the models from the
  // configuration above. The Engine deletes it.
  auto* zone = new GpuClusterZone("cluster:" + topo.card().name, topo,
                                  options.multi_plane_forwarding);
  zone_ = zone->get_iface();

  const int n = topo.num_gpus();
  hosts_.reserve(idx(n));
  for (int g = 0; g < n; ++g)
    hosts_.push_back(zone->create_host("gpu" + std::to_string(g), std::vector<double>{host_speed_flops})
                         ->set_core_count(std::max(1, options.host_cores)));
  first_host_id_ = hosts_.front()->get_netpoint()->id();
  for (int g = 0; g < n; ++g)
    if (hosts_[idx(g)]->get_netpoint()->id() != first_host_id_ + static_cast<unsigned long>(g))
      throw std::logic_error("SimgridPlatform: SimGrid numbered the GPU hosts' NetPoints out of order");

  const int physical = topo.num_physical_links();
  links_.reserve(2 * idx(physical));
  std::vector<LinkImpl*> impls;
  impls.reserve(2 * idx(physical));
  for (int l = 0; l < physical; ++l) {
    const Link& up = topo.link(2 * l);
    simgrid::s4u::SplitDuplexLink* sd =
        zone->create_split_duplex_link(link_name(topo, l), std::vector<double>{up.bandwidth});
    sd->set_latency(up.latency);
    sd->seal();
    for (simgrid::s4u::Link* d : {sd->get_link_up(), sd->get_link_down()}) {
      links_.push_back(d);
      impls.push_back(d->get_impl());
    }
  }
  simgrid::s4u::Link* loopback = simgrid::s4u::Link::by_name_or_null("__loopback__");
  if (loopback == nullptr)
    throw std::logic_error("SimgridPlatform: SimGrid's network model has no __loopback__ link");
  zone->set_routing(first_host_id_, std::move(impls), loopback->get_impl());
  zone->seal();
}

int SimgridPlatform::gpu_of(const simgrid::s4u::Host* host) const {
  if (host == nullptr) return -1;
  const unsigned long i = host->get_netpoint()->id() - first_host_id_;
  if (i >= hosts_.size() || hosts_[i] != host) return -1;
  return static_cast<int>(i);
}

std::vector<simgrid::s4u::Host*> build_simgrid_platform(simgrid::s4u::Engine& e, const Topology& topo,
                                                        double host_speed_flops) {
  return SimgridPlatform(e, topo, host_speed_flops).hosts();
}

}  // namespace tandem
