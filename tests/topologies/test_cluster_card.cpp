#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include <catch2/catch.hpp>

#include "cluster_cards.h"
#include "topologies/cluster_card.h"

using namespace tandem;

namespace {

std::string card_path(const std::string& stem) { return test::cluster_card_path(stem); }

// A private copy of the h800-2048 card's YAML, to edit.
YAML::Node h800_yaml() { return YAML::Clone(parse_card_file(card_path("h800-2048"))); }

Result<ClusterCard> read(const YAML::Node& n, const std::string& file = "edited.yaml",
                         std::shared_ptr<const OriginMap> origins = nullptr) {
  return catch_input_errors([&] { return read_cluster_card(n, file, origins); });
}

// Reads `n` and expects an InputError naming `file`, `key`, with `reason_part` in the reason.
void expect_error(const YAML::Node& n, const std::string& key, const std::string& reason_part) {
  auto r = read(n);
  INFO("key " << key);
  REQUIRE_FALSE(r.ok());
  INFO(r.error().message());
  CHECK(r.error().file == "edited.yaml");
  CHECK(r.error().key == key);
  CHECK(r.error().reason.find(reason_part) != std::string::npos);
}

}  // namespace

TEST_CASE("all cluster cards load", "[cards][cluster]") {
  for (const char* stem : {"h800-2048", "h100-1024", "h200-2048", "h100-1gpu"}) {
    auto r = load_cluster_card(card_path(stem));
    INFO(stem << ": " << (r.ok() ? std::string() : r.error().message()));
    REQUIRE(r.ok());
    CHECK(r.value().name == stem);
    CHECK(r.value().source_file == card_path(stem));
    CHECK_FALSE(r.value().description.empty());
    CHECK(r.value().price_per_gpu_hour > 0);
  }
}

TEST_CASE("h800-2048 card values", "[cards][cluster]") {
  auto r = load_cluster_card(card_path("h800-2048"));
  REQUIRE(r.ok());
  const ClusterCard& c = r.value();
  CHECK(c.nodes == 256);
  CHECK(c.gpus_per_node == 8);
  CHECK(c.gpus() == 2048);
  CHECK(c.gpu.name == "H800 SXM5");
  CHECK(c.gpu.sms == 132);
  CHECK(c.gpu.hbm_gbytes == 80);
  CHECK(c.gpu.hbm_tbytes_s == Approx(3.35));
  CHECK(c.gpu.bf16_tflops == 989);
  CHECK(c.gpu.fp8_tflops == 1979);
  CHECK(c.gpu.fp32_tflops == 67);
  CHECK(c.nvlink_gbytes_s == 160);
  CHECK(c.nvlink_nominal_gbytes_s == 400);
  CHECK(c.nvlink_latency_us == Approx(3.33));
  CHECK(c.nics_per_gpu == 1);
  CHECK(c.nic_gbps == 400);
  CHECK(c.nic_gbytes_s() == 50);
  CHECK(c.nics_per_node() == 8);
  CHECK(c.nics() == 2048);
  CHECK(c.fabric.topology == FabricTopology::multi_plane_fat_tree);
  CHECK(std::string(to_string(c.fabric.topology)) == "multi_plane_fat_tree");
  CHECK(c.fabric.planes == 8);
  CHECK(c.fabric.switch_radix == 64);
  CHECK(c.fabric.spines_per_plane == 32);  // default radix / 2
  CHECK(c.fabric.latency_same_leaf_us == Approx(2.8));
  CHECK(c.fabric.latency_cross_leaf_us == Approx(3.7));
  CHECK(c.price_per_gpu_hour == 2.0);
}

TEST_CASE("other cluster cards", "[cards][cluster]") {
  auto h100 = load_cluster_card(card_path("h100-1024"));
  REQUIRE(h100.ok());
  CHECK(h100.value().gpus() == 1024);
  CHECK(h100.value().nvlink_nominal_gbytes_s == 900);
  CHECK(h100.value().nvlink_gbytes_s == 360);
  CHECK(h100.value().fabric.planes == 8);

  auto h200 = load_cluster_card(card_path("h200-2048"));
  REQUIRE(h200.ok());
  CHECK(h200.value().gpus() == 2048);
  CHECK(h200.value().gpu.hbm_gbytes == 141);
  CHECK(h200.value().gpu.hbm_tbytes_s == Approx(4.8));
  CHECK(h200.value().gpu.bf16_tflops == 989);

  auto one = load_cluster_card(card_path("h100-1gpu"));
  REQUIRE(one.ok());
  CHECK(one.value().gpus() == 1);
  CHECK(one.value().fabric.topology == FabricTopology::fat_tree);
  CHECK(one.value().fabric.planes == 1);
  CHECK(one.value().nics_per_gpu == 1);
  CHECK(one.value().nic_gbps == 400);
}

TEST_CASE("name defaults to the file stem, description is optional", "[cards][cluster]") {
  YAML::Node n = h800_yaml();
  n.remove("name");
  n.remove("description");
  auto r = read(n, "/some/where/my-cluster.yaml");
  REQUIRE(r.ok());
  CHECK(r.value().name == "my-cluster");
  CHECK(r.value().description.empty());
}

TEST_CASE("cluster card: unknown keys", "[cards][cluster]") {
  {
    YAML::Node n = h800_yaml();
    n["nvlink_gbps"] = 1;
    expect_error(n, "nvlink_gbps", "unknown key");
  }
  {
    YAML::Node n = h800_yaml();
    n["fabric"]["oversubscription"] = 2;
    expect_error(n, "fabric.oversubscription", "unknown key");
  }
  {
    YAML::Node n = h800_yaml();
    n["gpu"]["tf32_tflops"] = 400;
    expect_error(n, "gpu.tf32_tflops", "unknown key");
  }
}

TEST_CASE("cluster card: wrong types", "[cards][cluster]") {
  {
    YAML::Node n = h800_yaml();
    n["nodes"] = "many";
    expect_error(n, "nodes", "whole number");
  }
  {
    YAML::Node n = h800_yaml();
    n["gpus_per_node"] = 7.5;
    expect_error(n, "gpus_per_node", "whole number");
  }
  {
    YAML::Node n = h800_yaml();
    n["nic_gbps"] = "fast";
    expect_error(n, "nic_gbps", "finite number");
  }
  {
    YAML::Node n = h800_yaml();
    n["gpu"] = 5;
    expect_error(n, "gpu", "map");
  }
  {
    YAML::Node n = h800_yaml();
    n["fabric"]["planes"] = YAML::Load("[8]");
    expect_error(n, "fabric.planes", "single value");
  }
  {
    YAML::Node n = h800_yaml();
    n["fabric"]["topology"] = "torus";
    expect_error(n, "fabric.topology", "must be one of");
  }
  auto whole = read(parse_card_text("[1, 2]", "edited.yaml"));
  REQUIRE_FALSE(whole.ok());
  CHECK(whole.error().file == "edited.yaml");
  CHECK(whole.error().key.empty());
}

TEST_CASE("cluster card: missing fields", "[cards][cluster]") {
  for (const char* key : {"nodes", "gpus_per_node", "nvlink_gbytes_s", "nic_gbps", "fabric",
                          "price_per_gpu_hour", "gpu"}) {
    YAML::Node n = h800_yaml();
    n.remove(key);
    expect_error(n, key, "missing");
  }
  {
    YAML::Node n = h800_yaml();
    n["gpu"].remove("sms");
    expect_error(n, "gpu.sms", "missing");
  }
  {
    YAML::Node n = h800_yaml();
    n["fabric"].remove("switch_radix");
    expect_error(n, "fabric.switch_radix", "missing");
  }
  {
    YAML::Node n = h800_yaml();
    n["fabric"].remove("planes");  // required for a multi-plane fabric
    expect_error(n, "fabric.planes", "missing");
  }
}

TEST_CASE("cluster card: values out of range", "[cards][cluster]") {
  struct Case {
    const char* section;  // "" for top level
    const char* key;
    const char* value;
    const char* reason;
  };
  const Case cases[] = {
      {"", "nodes", "0", "must be in [1, 16384]"},
      {"", "nodes", "20000", "must be in [1, 16384]"},
      {"", "nodes", "99999999999999999999", "whole number"},
      {"", "gpus_per_node", "73", "must be in [1, 72]"},
      {"", "nics_per_gpu", "0", "must be in [1, 8]"},
      {"", "nic_gbps", "-400", "must be in"},
      {"", "nvlink_gbytes_s", "0", "must be in"},
      {"", "nvlink_gbytes_s", "250", "exceeds half"},
      {"", "nvlink_latency_us", "1e9", "must be in"},
      {"", "price_per_gpu_hour", "-2", "must be in"},
      {"gpu", "sms", "0", "must be in"},
      {"gpu", "hbm_gbytes", "nan", "finite number"},
      {"gpu", "bf16_tflops", "inf", "finite number"},
      {"fabric", "switch_radix", "2", "must be in [4, 1024]"},
      {"fabric", "switch_radix", "2048", "must be in [4, 1024]"},
      {"fabric", "switch_radix", "63", "even"},
      {"fabric", "planes", "0", "must be in [1, 8]"},
      {"fabric", "planes", "9", "must be in [1, 8]"},
      {"fabric", "planes", "4", "one plane per NIC"},
      {"fabric", "spines_per_plane", "33", "must be in [1, 32]"},
      {"fabric", "latency_same_leaf_us", "-1", "must be in"},
      {"fabric", "latency_cross_leaf_us", "2", "at least latency_same_leaf_us"},
  };
  for (const Case& c : cases) {
    YAML::Node n = h800_yaml();
    if (std::string(c.section).empty())
      n[c.key] = YAML::Load(c.value);
    else
      n[c.section][c.key] = YAML::Load(c.value);
    std::string key = std::string(c.section).empty() ? c.key : std::string(c.section) + "." + c.key;
    INFO("value " << c.value);
    expect_error(n, key, c.reason);
  }
}

TEST_CASE("cluster card: a single-plane fat_tree has one plane", "[cards][cluster]") {
  YAML::Node n = h800_yaml();
  n["fabric"]["topology"] = "fat_tree";
  n["fabric"]["switch_radix"] = 128;
  expect_error(n, "fabric.planes", "must be in [1, 1]");
  n["fabric"].remove("planes");
  auto r = read(n);
  REQUIRE(r.ok());
  CHECK(r.value().fabric.planes == 1);
  CHECK(r.value().fabric.topology == FabricTopology::fat_tree);
}

TEST_CASE("cluster card: the fabric must hold the nodes", "[cards][cluster]") {
  {
    // 8 planes of 64-port switches hold 2048 nodes; 2049 do not fit.
    YAML::Node n = h800_yaml();
    n["nodes"] = 2048;
    CHECK(read(n).ok());
    n["nodes"] = 2049;
    expect_error(n, "nodes", "holds at most 2048");
  }
  {
    // Single plane of 64-port switches: 2048 NICs = 256 nodes of 8.
    YAML::Node n = h800_yaml();
    n["fabric"]["topology"] = "fat_tree";
    n["fabric"].remove("planes");
    CHECK(read(n).ok());
    n["nodes"] = 257;
    expect_error(n, "nodes", "fabric.switch_radix");
  }
  {
    YAML::Node n = h800_yaml();
    n["fabric"]["switch_radix"] = 16;  // 128 NICs per plane at most
    expect_error(n, "nodes", "holds at most 128");
  }
  {
    // The size cap: 16384 nodes x 72 GPUs would be 1.2M GPUs.
    YAML::Node n = h800_yaml();
    n["nodes"] = 16384;
    n["gpus_per_node"] = 72;
    expect_error(n, "nodes", "more than the 131072");
  }
}

TEST_CASE("cluster card: errors name the file", "[cards][cluster]") {
  auto missing = load_cluster_card("/nonexistent/dir/cluster.yaml");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().file == "/nonexistent/dir/cluster.yaml");
  CHECK(missing.error().reason.find("no such file") != std::string::npos);

  const auto path =
      (std::filesystem::temp_directory_path() / "tandem_bad_cluster_card.yaml").string();
  {
    std::ofstream out(path);
    out << "nodes: [\n";  // not valid YAML
  }
  auto bad_yaml = load_cluster_card(path);
  REQUIRE_FALSE(bad_yaml.ok());
  CHECK(bad_yaml.error().file == path);
  {
    std::ofstream out(path);
    YAML::Node n = h800_yaml();
    n["fabric"]["switch_radix"] = 65;
    out << n;
  }
  auto odd = load_cluster_card(path);
  REQUIRE_FALSE(odd.ok());
  CHECK(odd.error().file == path);
  CHECK(odd.error().key == "fabric.switch_radix");
  CHECK(odd.error().message().find(path + ": fabric.switch_radix: ") == 0);
  std::remove(path.c_str());
}

TEST_CASE("cluster card: overridden values are reported where they were written",
          "[cards][cluster]") {
  auto origins = std::make_shared<OriginMap>();
  (*origins)["nodes"] = ValueOrigin{"scenario.yaml", "cluster.nodes"};
  YAML::Node n = h800_yaml();
  n["nodes"] = 0;
  auto r = read(n, "edited.yaml", origins);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().file == "scenario.yaml");
  CHECK(r.error().key == "cluster.nodes");
}
