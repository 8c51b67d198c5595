// Loading the shipped cluster cards from tests: a card that does not load fails the test.
#pragma once

#include <string>

#include <catch2/catch.hpp>

#include "tests/test_paths.h"
#include "topologies/cluster_card.h"

namespace tandem::test {

inline std::string cluster_card_path(const std::string& stem) {
  return tandem::test::repo("topologies/" + stem + ".yaml");
}

inline ClusterCard cluster_card(const std::string& stem) {
  auto r = load_cluster_card(cluster_card_path(stem));
  INFO(stem << ": " << (r.ok() ? std::string() : r.error().message()));
  REQUIRE(r.ok());
  return r.value();
}

}  // namespace tandem::test
