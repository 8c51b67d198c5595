#include "common/card_reader.h"

#include <algorithm>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <regex>
#include <sstream>

#include "common/read_file.h"
#include "common/signed_index.h"

namespace tandem {

namespace {

std::string type_name(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "null";
    case YAML::NodeType::Scalar: return "a scalar";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a map";
    default: return "nothing";
  }
}

std::string quoted(const YAML::Node& n) {
  if (n.IsScalar()) {
    std::string s = n.Scalar();
    if (s.size() > 40) s = s.substr(0, 37) + "...";
    return "'" + s + "'";
  }
  return type_name(n);
}

// Parses a whole-string integer: "12", "-3", "+7"; rejects "1.5", "1e3", "12abc" and anything
// outside int64 (every int64 is accepted here, so a key's range, not the digit count, decides:
// routing.seed's maximum 2^62 has 19 digits).
std::optional<int64_t> parse_integer(const std::string& s) {
  if (s.empty()) return std::nullopt;
  const size_t i = s[0] == '+' ? 1 : 0;
  if (i == s.size() || s[i] == '+') return std::nullopt;
  int64_t v = 0;
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data() + i, end, v);
  if (ec != std::errc() || ptr != end) return std::nullopt;
  return v;
}

std::optional<double> parse_number(const std::string& s) {
  if (s.empty()) return std::nullopt;
  std::istringstream in(s);
  in.imbue(std::locale::classic());
  double v = 0;
  in >> v;
  if (in.fail() || !(in >> std::ws).eof()) return std::nullopt;
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

}  // namespace

std::string format_number(double v) {
  std::ostringstream o;
  o.imbue(std::locale::classic());
  o.precision(12);
  o << v;
  return o.str();
}

YAML::Node parse_card_file(const std::string& path) {
  Result<std::string> text = read_regular_file(path, kMaxCardBytes);
  if (!text) throw InputException(text.error());
  YAML::Node n = parse_card_text(text.value(), path);
  // An empty file is most often the output of a command that failed (`tandem bench ... > file`):
  // say so rather than "expected a map, got null" further down.
  if (n.IsNull()) throw_input_error(path, "", "the file is empty (no keys); was it written by a command that failed?");
  return n;
}

namespace {

// Where `text` stops being UTF-8 (YAML and JSON are Unicode text): the offset of the first byte
// that does not start or continue a well-formed sequence (overlong forms, surrogates and code
// points above U+10FFFF included), or npos.
size_t first_non_utf8(const std::string& text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    int len = 0;
    uint32_t cp = 0;
    if ((c & 0xE0) == 0xC0) len = 2, cp = c & 0x1F;
    else if ((c & 0xF0) == 0xE0) len = 3, cp = c & 0x0F;
    else if ((c & 0xF8) == 0xF0) len = 4, cp = c & 0x07;
    else return i;
    if (i + idx(len) > n) return i;
    for (int k = 1; k < len; ++k) {
      if ((s[i + idx(k)] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + idx(k)] & 0x3F);
    }
    const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += idx(len);
  }
  return std::string::npos;
}

}  // namespace

void check_utf8_text(const std::string& text, const std::string& source, const std::string& key) {
  const size_t bad = first_non_utf8(text);
  if (bad == std::string::npos) return;
  const size_t line = 1 + idx(std::count(text.begin(), text.begin() + static_cast<ptrdiff_t>(bad), '\n'));
  char byte[8];
  std::snprintf(byte, sizeof byte, "0x%02X", static_cast<unsigned char>(text[bad]));
  throw_input_error(source, key, std::string("not UTF-8 text (YAML and JSON are): byte ") + byte + " at line " + std::to_string(line));
}

YAML::Node parse_card_text(const std::string& text, const std::string& source) {
  check_utf8_text(text, source, "");
  YAML::Node n;
  try {
    n = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw_input_error(source, "", "not valid YAML/JSON: " + e.msg + " (line " +
                                      std::to_string(e.mark.line + 1) + ")");
  }
  check_card_tree(n, source, "");
  return n;
}

namespace {

// The dotted key of a place in the tree: `base`, then the labels of the frames (map keys; list
// indices as [i]), cut after a few levels so that a self-referencing alias still gives one line.
std::string tree_key(const std::string& base, const std::vector<std::string>& labels) {
  constexpr size_t kShown = 6;
  std::string k = base;
  for (size_t i = 0; i < labels.size() && i < kShown; ++i) {
    const bool index = !labels[i].empty() && labels[i][0] == '[';
    k += (k.empty() || index ? "" : ".") + labels[i];
  }
  if (labels.size() > kShown) k += "...";
  return k;
}

}  // namespace

void check_card_tree(const YAML::Node& root, const std::string& source, const std::string& base_key) {
  // Depth-first with an explicit stack of frames (no recursion: a cycle cannot overflow the
  // stack); the node count follows aliases, so it counts the tree as every reader would see it.
  struct Frame {
    bool map = false;
    YAML::const_iterator it, end;
    size_t index = 0;  // lists: the next element's index
  };
  std::vector<Frame> frames;
  std::vector<std::string> labels;  // labels[i]: how frames[i] was reached (labels[0] unused)
  size_t nodes = 0;
  auto enter = [&](const YAML::Node& n, std::string label) {
    labels.push_back(std::move(label));
    const auto key = [&] { return tree_key(base_key, {labels.begin() + 1, labels.end()}); };
    if (++nodes > kMaxCardNodes)
      throw_input_error(source, key(), "expands to more than " + std::to_string(kMaxCardNodes) +
                                           " values (YAML aliases nested or referring to themselves?)");
    if (!n.IsMap() && !n.IsSequence()) {
      labels.pop_back();
      return;
    }
    if (frames.size() >= kMaxCardDepth)
      throw_input_error(source, key(), "nested deeper than " + std::to_string(kMaxCardDepth) +
                                           " levels (a YAML alias that refers to itself?)");
    if (n.IsMap()) {
      std::set<std::string, std::less<>> seen;
      for (auto it = n.begin(); it != n.end(); ++it) {
        if (!it->first.IsScalar() || seen.insert(it->first.Scalar()).second) continue;
        labels.push_back(it->first.Scalar());
        throw_input_error(source, key(), "key written twice in one map");
      }
    }
    frames.push_back(Frame{n.IsMap(), n.begin(), n.end(), 0});
  };
  enter(root, "");
  while (!frames.empty()) {
    Frame& f = frames.back();
    if (f.it == f.end) {
      frames.pop_back();
      labels.pop_back();
      continue;
    }
    if (f.map) {
      const YAML::Node k = f.it->first;
      const YAML::Node v = f.it->second;
      ++f.it;
      const std::string label = k.IsScalar() ? k.Scalar() : "?";
      if (!k.IsScalar()) enter(k, label);  // a complex key is a tree too
      enter(v, label);
    } else {
      const YAML::Node v = *f.it;
      ++f.it;
      enter(v, "[" + std::to_string(f.index++) + "]");
    }
  }
}

namespace {
thread_local KeyRecording* active_recording = nullptr;

std::string range_text(double min, double max, bool whole) {
  auto num = [&](double v) { return whole ? std::to_string(static_cast<int64_t>(v)) : format_number(v); };
  const bool open_top = whole ? max >= 9.2e18 : max >= 1e300;
  const bool open_bottom = whole ? min <= -9.2e18 : min <= -1e300;
  if (open_top && open_bottom) return "";
  if (open_top) return ">= " + num(min);
  if (open_bottom) return "<= " + num(max);
  return "[" + num(min) + ", " + num(max) + "]";
}

std::string choices_text(std::span<const std::string_view> allowed) {
  std::string list;
  for (auto a : allowed) list += (list.empty() ? "" : ", ") + std::string(a);
  return list;
}
}  // namespace

KeyRecording::KeyRecording() : outer_(active_recording) { active_recording = this; }
KeyRecording::~KeyRecording() { active_recording = outer_; }

void KeyRecording::note(KeySpec spec) {
  static const std::regex index(R"(\[[0-9]+\])");
  spec.key = std::regex_replace(spec.key, index, "[]");
  auto [it, fresh] = seen_.emplace(std::make_pair(spec.file, spec.key), keys_.size());
  if (fresh) {
    keys_.push_back(std::move(spec));
  } else if (keys_[it->second].weak && !spec.weak) {
    keys_[it->second] = std::move(spec);
  }
}

void CardReader::note(std::string_view key, std::string type, std::string allowed,
                      std::string fallback, bool weak) const {
  if (active_recording)
    active_recording->note({file_, path(key), std::move(type), std::move(allowed), std::move(fallback), weak});
}

CardReader::CardReader(YAML::Node map, std::string file, std::string prefix,
                       std::shared_ptr<const OriginMap> origins)
    : node_(std::move(map)), file_(std::move(file)), prefix_(std::move(prefix)),
      origins_(std::move(origins)) {
  if (!node_.IsMap()) {
    std::string where = prefix_.empty() ? "" : prefix_.substr(0, prefix_.size() - 1);
    if (where.empty()) throw_input_error(file_, "", "expected a map of keys, got " + type_name(node_));
    fail("", "expected a map of keys, got " + type_name(node_));
  }
}

std::string CardReader::path(std::string_view key) const {
  if (key.empty()) return prefix_.empty() ? "" : prefix_.substr(0, prefix_.size() - 1);
  return prefix_ + std::string(key);
}

void CardReader::fail(std::string_view key, const std::string& reason) const {
  std::string p = path(key);
  if (origins_) {
    // The most specific override at or above this key names where the value was written.
    std::string probe = p;
    while (true) {
      auto it = origins_->find(probe);
      if (it != origins_->end()) {
        std::string k = it->second.key + p.substr(probe.size());
        throw_input_error(it->second.file, k, reason);
      }
      auto dot = probe.rfind('.');
      if (dot == std::string::npos) break;
      probe.resize(dot);
    }
  }
  throw_input_error(file_, p, reason);
}

YAML::Node CardReader::get(std::string_view key) const {
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
  }
  return YAML::Node(YAML::NodeType::Undefined);
}

bool CardReader::has(std::string_view key) const {
  YAML::Node n = get(key);
  return n.IsDefined() && !n.IsNull();
}

YAML::Node CardReader::scalar(std::string_view key, bool required) {
  used_.insert(std::string(key));
  YAML::Node n = get(key);
  if (!n.IsDefined() || n.IsNull()) {
    if (required) fail(key, "missing (required)");
    return YAML::Node(YAML::NodeType::Undefined);
  }
  if (!n.IsScalar()) fail(key, "expected a single value, got " + type_name(n));
  return n;
}

int64_t CardReader::integer(std::string_view key, int64_t min, int64_t max) {
  note(key, "whole number", range_text(double(min), double(max), true), "required");
  YAML::Node n = scalar(key, true);
  auto v = parse_integer(n.Scalar());
  if (!v) fail(key, "expected a whole number, got " + quoted(n));
  if (*v < min || *v > max)
    fail(key, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " +
                  std::to_string(*v));
  return *v;
}

int64_t CardReader::integer_or(std::string_view key, int64_t fallback, int64_t min, int64_t max) {
  note(key, "whole number", range_text(double(min), double(max), true), std::to_string(fallback));
  if (!has(key)) {
    used_.insert(std::string(key));
    return fallback;
  }
  return integer(key, min, max);
}

std::optional<int64_t> CardReader::optional_integer(std::string_view key, int64_t min,
                                                    int64_t max) {
  note(key, "whole number", range_text(double(min), double(max), true), "optional (null: none)");
  if (!has(key)) {
    used_.insert(std::string(key));
    return std::nullopt;
  }
  return integer(key, min, max);
}

double CardReader::number(std::string_view key, double min, double max) {
  note(key, "number", range_text(min, max, false), "required");
  YAML::Node n = scalar(key, true);
  auto v = parse_number(n.Scalar());
  if (!v) fail(key, "expected a finite number, got " + quoted(n));
  if (*v < min || *v > max)
    fail(key, "must be in [" + format_number(min) + ", " + format_number(max) + "], got " +
                  format_number(*v));
  return *v;
}

double CardReader::number_or(std::string_view key, double fallback, double min, double max) {
  note(key, "number", range_text(min, max, false), format_number(fallback));
  if (!has(key)) {
    used_.insert(std::string(key));
    return fallback;
  }
  return number(key, min, max);
}

bool CardReader::boolean(std::string_view key) {
  note(key, "true/false", "", "required");
  YAML::Node n = scalar(key, true);
  const std::string& s = n.Scalar();
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  fail(key, "expected true or false, got " + quoted(n));
}

bool CardReader::boolean_or(std::string_view key, bool fallback) {
  note(key, "true/false", "", fallback ? "true" : "false");
  if (!has(key)) {
    used_.insert(std::string(key));
    return fallback;
  }
  return boolean(key);
}

std::string CardReader::text(std::string_view key) {
  note(key, "text", "", "required");
  YAML::Node n = scalar(key, true);
  if (n.Scalar().empty()) fail(key, "must not be empty");
  return n.Scalar();
}

std::string CardReader::text_or(std::string_view key, std::string fallback) {
  note(key, "text", "", fallback.empty() ? "(empty)" : fallback);
  if (!has(key)) {
    used_.insert(std::string(key));
    return fallback;
  }
  return text(key);
}

std::string CardReader::choice(std::string_view key,
                               std::initializer_list<std::string_view> allowed) {
  return choice(key, std::span<const std::string_view>(allowed.begin(), allowed.size()));
}

std::string CardReader::choice(std::string_view key, std::span<const std::string_view> allowed) {
  note(key, "one of", choices_text(allowed), "required");
  std::string v = text(key);
  std::string list;
  for (auto a : allowed) {
    if (v == a) return v;
    list += (list.empty() ? "" : ", ") + std::string(a);
  }
  fail(key, "must be one of {" + list + "}, got '" + v + "'");
}

std::string CardReader::choice_or(std::string_view key, std::string fallback,
                                  std::initializer_list<std::string_view> allowed) {
  note(key, "one of", choices_text(allowed), fallback.empty() ? "(none)" : fallback);
  if (!has(key)) {
    used_.insert(std::string(key));
    return fallback;
  }
  return choice(key, allowed);
}

std::vector<int64_t> CardReader::integer_list_or(std::string_view key, int64_t min, int64_t max,
                                                 size_t max_len) {
  note(key, "list of whole numbers", range_text(double(min), double(max), true), "empty");
  YAML::Node n = get(key);
  if (!n.IsDefined() || n.IsNull()) {
    used_.insert(std::string(key));
    return {};
  }
  return integer_list(key, min, max, max_len);
}

std::vector<int64_t> CardReader::integer_list(std::string_view key, int64_t min, int64_t max,
                                              size_t max_len) {
  note(key, "list of whole numbers", range_text(double(min), double(max), true), "required");
  used_.insert(std::string(key));
  YAML::Node n = get(key);
  if (!n.IsDefined() || n.IsNull()) fail(key, "missing (required)");
  if (!n.IsSequence()) fail(key, "expected a list of whole numbers, got " + type_name(n));
  if (n.size() > max_len) fail(key, "list too long (" + std::to_string(n.size()) + " > " +
                                        std::to_string(max_len) + ")");
  std::vector<int64_t> out;
  for (size_t i = 0; i < n.size(); ++i) {
    std::string k = std::string(key) + "[" + std::to_string(i) + "]";
    if (!n[i].IsScalar()) fail(k, "expected a whole number, got " + type_name(n[i]));
    auto v = parse_integer(n[i].Scalar());
    if (!v) fail(k, "expected a whole number, got " + quoted(n[i]));
    if (*v < min || *v > max)
      fail(k, "must be in [" + std::to_string(min) + ", " + std::to_string(max) + "], got " +
                  std::to_string(*v));
    out.push_back(*v);
  }
  return out;
}

CardReader CardReader::section(std::string_view key) {
  note(key, "section", "", "required");
  used_.insert(std::string(key));
  YAML::Node n = get(key);
  if (!n.IsDefined() || n.IsNull()) fail(key, "missing (required section)");
  if (!n.IsMap()) fail(key, "expected a map of keys, got " + type_name(n));
  return CardReader(n, file_, path(key) + ".", origins_);
}

std::optional<CardReader> CardReader::optional_section(std::string_view key) {
  note(key, "section", "", "optional");
  used_.insert(std::string(key));
  YAML::Node n = get(key);
  if (!n.IsDefined() || n.IsNull()) return std::nullopt;
  if (!n.IsMap()) fail(key, "expected a map of keys, got " + type_name(n));
  return CardReader(n, file_, path(key) + ".", origins_);
}

void CardReader::ignore(std::string_view key) {
  note(key, "accepted, no bearing on results", "", "optional", /*weak=*/true);
  used_.insert(std::string(key));
}

void CardReader::read_whole(std::string_view key, std::string what) {
  note(key, std::move(what), "", "optional");
  used_.insert(std::string(key));
}

void CardReader::finish() const {
  for (auto it = node_.begin(); it != node_.end(); ++it) {
    if (!it->first.IsScalar()) fail("", "keys must be plain names");
    const std::string& k = it->first.Scalar();
    if (used_.find(k) == used_.end()) fail(k, "unknown key");
  }
}

}  // namespace tandem
