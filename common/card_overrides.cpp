#include "common/card_overrides.h"

#include "common/card_reader.h"

namespace tandem {

std::vector<std::string> split_dots(const std::string& key) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = key.find('.', start);
    parts.push_back(key.substr(start, dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return parts;
}

YAML::Node find_child(const YAML::Node& map, const std::string& key) {
  for (auto it = map.begin(); it != map.end(); ++it)
    if (it->first.IsScalar() && it->first.Scalar() == key) return it->second;
  return YAML::Node(YAML::NodeType::Undefined);
}

void apply_set(YAML::Node& root, const std::string& text, const std::string& source, OriginMap& origins,
               const std::function<bool(const std::string&)>& scalar_is_reference) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw_input_error(source, text, "expected --set key=value (e.g. --set plan.pp=8)");
  const std::string key = text.substr(0, eq);
  const std::string raw = text.substr(eq + 1);
  const std::vector<std::string> parts = split_dots(key);
  for (const auto& p : parts)
    if (p.empty()) throw_input_error(source, key, "empty name in the dotted key");
  check_utf8_text(raw, source, key);
  YAML::Node value;
  try {
    value = YAML::Load(raw);
  } catch (const YAML::Exception&) {
    value = YAML::Node(raw);
  }
  if (!value.IsDefined() || value.IsNull()) value = YAML::Node(raw);
  check_card_tree(value, source, key);  // a value is a tree of its own: aliases, duplicate keys

  YAML::Node node;
  node.reset(root);
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node child = find_child(node, parts[i]);
    if (i == 0 && scalar_is_reference && scalar_is_reference(parts[i]) && child.IsScalar()) {
      YAML::Node m(YAML::NodeType::Map);
      m["card"] = child.Scalar();
      node[parts[i]] = m;
      child = find_child(node, parts[i]);
    } else if (!child.IsDefined() || child.IsNull()) {
      node[parts[i]] = YAML::Node(YAML::NodeType::Map);
      child = find_child(node, parts[i]);
    } else if (!child.IsMap()) {
      std::string prefix;
      for (size_t j = 0; j <= i; ++j) prefix += (j ? "." : "") + parts[j];
      throw_input_error(source, key, "'" + prefix + "' is a single value, not a section");
    }
    node.reset(child);  // rebind the handle: plain assignment would overwrite the parent's value
  }
  node[parts.back()] = value;
  origins[key] = ValueOrigin{source, key};
}

void merge_into(YAML::Node target, const YAML::Node& overrides, const std::string& path,
                const ValueOrigin& origin, OriginMap& origins) {
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    const std::string k = it->first.Scalar();
    const std::string key = path.empty() ? k : path + "." + k;
    const ValueOrigin here{origin.file, origin.key + "." + k};
    YAML::Node existing = find_child(target, k);
    if (it->second.IsMap() && existing.IsMap()) {
      merge_into(existing, it->second, key, here, origins);
    } else {
      target[k] = it->second;
      origins.emplace(key, here);
    }
  }
}

}  // namespace tandem
