// Overrides laid over a card's YAML tree before it is read, each value's origin recorded so that
// an error about it names where it came from (CardReader::fail looks up OriginMap):
//   apply_set   one `--set a.b.c=value` from the command line;
//   merge_into  a card section's inline overrides (`model: {card: path, key: value}`) over the card.
// Both are bounded: a --set value is checked as a tree of its own (aliases, duplicate keys, depth:
// check_card_tree) and merge_into walks only as deep as the card's own maps.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/card_reader.h"

namespace tandem {

// "a.b.c" -> {"a", "b", "c"} (empty parts kept: the caller refuses them).
std::vector<std::string> split_dots(const std::string& key);

// The child of `map` named `key`, or an undefined node; never inserts (operator[] on a non-const
// node would).
YAML::Node find_child(const YAML::Node& map, const std::string& key);

// Applies "key=value" (a YAML value; text that does not parse stays text) to `root`, creating the
// sections on the way; `source` names the override in errors ("scenario.yaml [--set]"). A scalar
// met at the top level whose name `scalar_is_reference` accepts (a scenario's `model: path`)
// becomes {card: path} first, so the override reaches into the referenced card. Throws
// InputException: no '=', an empty name, a value that is not UTF-8 or not a bounded tree, or a
// path through a single value.
void apply_set(YAML::Node& root, const std::string& text, const std::string& source, OriginMap& origins,
               const std::function<bool(const std::string&)>& scalar_is_reference = {});

// Lays `overrides` over the card's `target`: a map over a map merges key by key, anything else
// replaces the card's value. Each replaced value's origin is recorded under its dotted path
// `path`; one origin covers every key below it (CardReader::fail looks up the most specific), so
// nothing walks into an override's own tree — only as deep as the card's maps, which
// check_card_tree bounds — and an origin already recorded (from --set) is kept.
void merge_into(YAML::Node target, const YAML::Node& overrides, const std::string& path, const ValueOrigin& origin,
                OriginMap& origins);

}  // namespace tandem
