// Property test: the shipped cards, mutated at random, either load as a valid scenario or give
// one InputError naming a file and a reason — never a crash, another exception or a hang.
//
// TANDEM_FUZZ_CARDS sets how many mutated scenarios to try (default 10000), TANDEM_FUZZ_SEED the
// seed (default 1); the same seed always tries the same cards.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "scenarios/scenario.h"
#include "../test_paths.h"

using namespace tandem;
using tandem::test::repo;
namespace fs = std::filesystem;

namespace {

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v ? std::strtoll(v, nullptr, 10) : fallback;
}

std::vector<std::string> yaml_files(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(repo(dir)))
    if (e.path().extension() == ".yaml") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Every node of a tree with its parent, so a mutation can replace or delete it.
struct Slot {
  YAML::Node parent;
  std::string key;  // map key, or "" for a sequence element
  size_t index = 0;
};

void collect(const YAML::Node& n, std::vector<Slot>& out) {
  if (n.IsMap()) {
    for (auto it = n.begin(); it != n.end(); ++it) {
      if (!it->first.IsScalar()) continue;
      out.push_back(Slot{n, it->first.Scalar(), 0});
      collect(it->second, out);
    }
  } else if (n.IsSequence()) {
    for (size_t i = 0; i < n.size(); ++i) {
      out.push_back(Slot{n, "", i});
      collect(n[i], out);
    }
  }
}

YAML::Node random_value(std::mt19937_64& rng, const YAML::Node& old) {
  static const char* const kScalars[] = {
      "0", "-1", "1", "2", "3", "7", "64", "128", "4096", "1000000", "4611686018427387904",
      "-4611686018427387904", "99999999999999999999", "1e308", "-1e308", "0.5", "1e-9", "nan",
      ".inf", "-.inf", "abc", "", "true", "false", "null", "~", "1f1b", "dualpipe", "dualpipev",
      "zb1p", "fp8", "bf16", "sigmoid", "softmax", "skewed", "fat_tree", "multi_plane_fat_tree",
      "../models/tiny-moe.yaml", "/nonexistent.yaml", "0x10", "1_000", "12abc", " 5 "};
  std::uniform_int_distribution<int> pick(0, 9);
  switch (pick(rng)) {
    case 0: return YAML::Node(YAML::NodeType::Sequence);
    case 1: return YAML::Node(YAML::NodeType::Map);
    case 2: {
      YAML::Node seq;
      for (int i = 0; i < 3; ++i) seq.push_back(static_cast<int>(rng() % 9) - 1);
      return seq;
    }
    case 3: {
      YAML::Node map;
      map["x"] = static_cast<int>(rng() % 100);
      return map;
    }
    case 4:
    case 5: {  // nudge a number: double, halve, +-1, negate
      if (old.IsScalar()) {
        try {
          const double v = std::stod(old.Scalar());
          const double choices[] = {v * 2, v / 2, v + 1, v - 1, -v, std::floor(v / 3)};
          std::ostringstream o;
          o.precision(17);
          o << choices[rng() % 6];
          return YAML::Node(o.str());
        } catch (...) {
        }
      }
      [[fallthrough]];
    }
    default: return YAML::Node(std::string(kScalars[rng() % std::size(kScalars)]));
  }
}

void mutate(YAML::Node& root, std::mt19937_64& rng) {
  std::vector<Slot> slots;
  collect(root, slots);
  if (slots.empty()) return;
  Slot s = slots[rng() % slots.size()];
  const int action = static_cast<int>(rng() % 10);
  if (!s.key.empty()) {
    YAML::Node old = s.parent[s.key];
    if (action == 0) {
      s.parent.remove(s.key);
    } else if (action == 1) {
      s.parent[s.key + "x"] = YAML::Clone(old);  // an unknown key
      s.parent.remove(s.key);
    } else {
      s.parent[s.key] = random_value(rng, old);
    }
  } else {
    if (action == 0) {
      s.parent.push_back(YAML::Clone(s.parent[s.index]));
    } else {
      s.parent[s.index] = random_value(rng, s.parent[s.index]);
    }
  }
}

// The card a scenario section refers to, resolved relative to the scenario's folder.
std::string card_path(const YAML::Node& scenario, const std::string& section, const std::string& dir) {
  const YAML::Node ref = scenario[section];
  const std::string rel = ref.IsMap() ? ref["card"].Scalar() : ref.Scalar();
  return (fs::path(dir) / rel).lexically_normal().string();
}

void write(const std::string& path, const YAML::Node& node) {
  YAML::Emitter out;
  out << node;
  std::ofstream(path) << out.c_str() << "\n";
}

}  // namespace

TEST_CASE("mutated shipped cards load or fail with a named error", "[fuzz]") {
  const int64_t cases = env_int("TANDEM_FUZZ_CARDS", 10000);
  const uint64_t seed = static_cast<uint64_t>(env_int("TANDEM_FUZZ_SEED", 1));
  std::mt19937_64 rng(seed);
  const auto scenarios = yaml_files("scenarios");
  REQUIRE(!scenarios.empty());
  // Per process: two checkouts' suites may run at once on one machine.
  const fs::path dir = fs::temp_directory_path() / ("tandem_fuzz_" + std::to_string(seed) + "_" + std::to_string(getpid()));
  fs::create_directories(dir);

  int64_t valid = 0, invalid = 0;
  double slowest = 0;
  std::string slowest_case;
  for (int64_t i = 0; i < cases; ++i) {
    const std::string& src = scenarios[rng() % scenarios.size()];
    YAML::Node scenario = YAML::LoadFile(src);
    const std::string src_dir = fs::path(src).parent_path().string();
    YAML::Node model = YAML::LoadFile(card_path(scenario, "model", src_dir));
    YAML::Node cluster = YAML::LoadFile(card_path(scenario, "cluster", src_dir));
    // Point the scenario at the copies, keeping any in-scenario overrides.
    for (const char* section : {"model", "cluster"}) {
      if (scenario[section].IsMap()) scenario[section]["card"] = std::string(section) + ".yaml";
      else scenario[section] = std::string(section) + ".yaml";
    }
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < mutations; ++k) {
      switch (rng() % 3) {
        case 0: mutate(scenario, rng); break;
        case 1: mutate(model, rng); break;
        default: mutate(cluster, rng); break;
      }
    }
    write((dir / "scenario.yaml").string(), scenario);
    write((dir / "model.yaml").string(), model);
    write((dir / "cluster.yaml").string(), cluster);

    const auto t0 = std::chrono::steady_clock::now();
    Result<Scenario> r = InputError{};
    try {
      r = load_scenario((dir / "scenario.yaml").string());
    } catch (const std::exception& e) {
      FAIL("case " << i << ": escaped exception: " << e.what());
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt > slowest) {
      slowest = dt;
      slowest_case = std::to_string(i);
    }
    if (r.ok()) {
      ++valid;
      const Scenario& s = r.value();
      // A valid scenario is internally consistent.
      REQUIRE(s.plan.pp * s.plan.dp * s.plan.tp == s.gpus);
      REQUIRE(s.micro_batches() >= 1);
      REQUIRE(s.batch.global_sequences % (s.plan.dp * s.batch.micro_batch_sequences) == 0);
    } else {
      ++invalid;
      INFO("case " << i << ": " << r.error().message());
      REQUIRE_FALSE(r.error().file.empty());
      REQUIRE_FALSE(r.error().reason.empty());
    }
  }
  WARN("fuzz: " << cases << " mutated scenarios, " << valid << " valid, " << invalid
                << " rejected with a named error; slowest load " << slowest << " s (case "
                << slowest_case << ")");
  CHECK(valid > 0);
  CHECK(invalid > cases / 2);
  fs::remove_all(dir);
}
