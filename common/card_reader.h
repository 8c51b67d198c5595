// CardReader: strict, typed reading of one YAML (or JSON) map of a card.
//
// Contract: every value is read through a typed accessor with its allowed range; a missing
// required key, a wrong type, a value out of range and (at finish()) any key never read all
// throw InputException naming the file, the dotted key and the reason. Keys that came from an
// override (a scenario's `model:`/`cluster:` section, or --set on the command line) are reported
// against where the override was written, not against the card file.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <yaml-cpp/yaml.h>

#include "common/input_error.h"

namespace tandem {

// Where a value was written, for values that override a card's own.
struct ValueOrigin {
  std::string file;
  std::string key;
};
using OriginMap = std::map<std::string, ValueOrigin>;  // dotted path in the card -> origin

// What a card may hold. A card is a few KB, a calibration or a bench output tens of KB: 1 MiB
// leaves ample room, while yaml-cpp, which keeps ~500 bytes per node (measured: a 4 MiB list of
// 2M zeros took 1 GB), builds at most ~250 MB from the largest file accepted.
inline constexpr uint64_t kMaxCardBytes = uint64_t{1} << 20;
// Aliases share nodes, so a few KB can stand for billions of values ("billion laughs") or for
// an endless tree (`&a {x: *a}`): every reader that walks a card would walk that. The tree as
// expanded through its aliases is held to these bounds.
inline constexpr size_t kMaxCardNodes = size_t{1} << 20;
inline constexpr size_t kMaxCardDepth = 256;

// Parses a YAML or JSON file into a node; errors name the file. Reads a regular file of at most
// kMaxCardBytes (never blocks on a FIFO, never reads a device) and checks it (check_card_tree).
YAML::Node parse_card_file(const std::string& path);
// Parses text (for tests); `source` names it in errors. Checked as parse_card_file's.
YAML::Node parse_card_text(const std::string& text, const std::string& source);
// An InputError naming `source` and `key` unless `text` is well-formed UTF-8 (what YAML and JSON
// are; strings of a card end up in JSON output, which cannot carry anything else).
void check_utf8_text(const std::string& text, const std::string& source, const std::string& key);

// Throws InputException (file `source`, key `base_key` + the path inside `node`) when the tree,
// expanded through its aliases, has more than kMaxCardNodes values, nests deeper than
// kMaxCardDepth levels (an alias inside itself nests forever), or a map holds a key twice (YAML
// would keep one of them silently). Never recurses. --set values go through it as files do.
void check_card_tree(const YAML::Node& node, const std::string& source, const std::string& base_key);

class CardReader {
 public:
  CardReader(YAML::Node map, std::string file, std::string prefix = "",
             std::shared_ptr<const OriginMap> origins = nullptr);

  bool has(std::string_view key) const;

  int64_t integer(std::string_view key, int64_t min, int64_t max);
  int64_t integer_or(std::string_view key, int64_t fallback, int64_t min, int64_t max);
  // Missing or null -> nullopt (Hugging Face configs write absent ranks as null).
  std::optional<int64_t> optional_integer(std::string_view key, int64_t min, int64_t max);
  double number(std::string_view key, double min, double max);
  double number_or(std::string_view key, double fallback, double min, double max);
  bool boolean(std::string_view key);
  bool boolean_or(std::string_view key, bool fallback);
  std::string text(std::string_view key);
  std::string text_or(std::string_view key, std::string fallback);
  std::string choice(std::string_view key, std::initializer_list<std::string_view> allowed);
  std::string choice(std::string_view key, std::span<const std::string_view> allowed);
  std::string choice_or(std::string_view key, std::string fallback,
                        std::initializer_list<std::string_view> allowed);
  std::vector<int64_t> integer_list(std::string_view key, int64_t min, int64_t max,
                                    size_t max_len = 4096);
  // The same, an empty list when the key is absent.
  std::vector<int64_t> integer_list_or(std::string_view key, int64_t min, int64_t max,
                                       size_t max_len = 4096);

  CardReader section(std::string_view key);
  std::optional<CardReader> optional_section(std::string_view key);

  void ignore(std::string_view key);  // accepted, with no bearing on tandem's results
  // Marks a key its loader reads as a whole through node() (a list of rows, another card's
  // keys); `what` describes it for the key reference.
  void read_whole(std::string_view key, std::string what);
  void finish() const;                // throws on the first key never read nor ignored

  std::string path(std::string_view key) const;  // prefix + key
  [[noreturn]] void fail(std::string_view key, const std::string& reason) const;
  const std::string& file() const { return file_; }
  const YAML::Node& node() const { return node_; }

 private:
  YAML::Node scalar(std::string_view key, bool required);
  void note(std::string_view key, std::string type, std::string allowed, std::string fallback,
            bool weak = false) const;
  YAML::Node get(std::string_view key) const;

  YAML::Node node_;
  std::string file_;
  std::string prefix_;
  std::shared_ptr<const OriginMap> origins_;
  std::set<std::string, std::less<>> used_;
};

// What one typed accessor of a CardReader was asked for: the reference of card keys
// (`tandem keys`) is recorded from the readers themselves, so it cannot drift from them.
struct KeySpec {
  std::string file;      // the card the key was read from
  std::string key;       // dotted path; list indices written as []
  std::string type;      // "whole number", "number", "true/false", "text", "one of", "section", ...
  std::string allowed;   // range or choices ("" if any value of the type)
  std::string fallback;  // the default when absent; "required", or "optional" (no default)
  bool weak = false;     // from ignore(): a later typed read of the key replaces it
};

// While one is alive, every CardReader on this thread records the keys it is asked for
// (the first request of a file's key wins: `_or` accessors record their default first).
class KeyRecording {
 public:
  KeyRecording();
  ~KeyRecording();
  KeyRecording(const KeyRecording&) = delete;
  KeyRecording& operator=(const KeyRecording&) = delete;
  const std::vector<KeySpec>& keys() const { return keys_; }
  void note(KeySpec spec);

 private:
  KeyRecording* outer_;
  std::vector<KeySpec> keys_;
  std::map<std::pair<std::string, std::string>, size_t> seen_;  // (file, key) -> index in keys_
};

// Formats a number the way messages show it (no trailing zeros).
std::string format_number(double v);

}  // namespace tandem
