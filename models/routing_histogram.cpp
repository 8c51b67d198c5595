#include "models/routing_histogram.h"

#include <string_view>

#include "common/card_reader.h"
#include "common/read_file.h"
#include "common/signed_index.h"

namespace tandem {

namespace {

constexpr std::string_view kHeader = "layer,expert,tokens";

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

// The MoE layers the workload routes: the main model's, then the MTP modules' (numbered on).
std::vector<int64_t> moe_layers(const ModelCard& m) {
  std::vector<int64_t> out;
  for (int64_t l = 0; l < m.num_hidden_layers + m.num_nextn_predict_layers; ++l)
    if (m.is_moe_layer(l)) out.push_back(l);
  return out;
}

// "3..61" for a run of consecutive layers, else the list (what a wrong layer is told to be).
std::string describe_layers(const std::vector<int64_t>& layers) {
  if (layers.empty()) return "none";
  if (layers.back() - layers.front() + 1 == static_cast<int64_t>(layers.size()))
    return std::to_string(layers.front()) + ".." + std::to_string(layers.back());
  std::string s;
  for (int64_t l : layers) s += (s.empty() ? "" : ", ") + std::to_string(l);
  return s;
}

class Parser {
 public:
  Parser(const std::string& source, const ModelCard& m) : source_(source), m_(m) {}

  RoutingHistogram parse(const std::string& text) {
    RoutingHistogram h;
    h.file = source_;
    h.experts = m_.n_routed_experts;
    const std::vector<int64_t> layers = moe_layers(m_);
    if (layers.empty()) throw_input_error(source_, "", "the model '" + m_.name + "' has no MoE layers to route");
    std::map<std::pair<int64_t, int64_t>, int64_t> seen_on;  // (layer, expert) -> line
    bool header = false;
    size_t start = 0;
    if (text.rfind("\xEF\xBB\xBF", 0) == 0) start = 3;  // a UTF-8 byte-order mark, as spreadsheets write
    for (int64_t line = 1; start <= text.size(); ++line) {
      size_t end = text.find('\n', start);
      if (end == std::string::npos) end = text.size();
      const std::string_view row = trim(std::string_view(text).substr(start, end - start));
      start = end + 1;
      line_ = line;
      if (row.empty() || row.front() == '#') continue;
      if (!header) {
        if (row != kHeader)
          fail("expected the header '" + std::string(kHeader) + "', got '" + std::string(row.substr(0, 80)) + "'");
        header = true;
        continue;
      }
      std::vector<std::string_view> f;
      size_t from = 0;
      while (true) {
        const size_t comma = row.find(',', from);
        f.push_back(trim(row.substr(from, comma == std::string_view::npos ? std::string_view::npos : comma - from)));
        if (comma == std::string_view::npos) break;
        from = comma + 1;
      }
      if (f.size() != 3) fail("expected 3 fields (layer,expert,tokens), got " + std::to_string(f.size()));
      const int64_t layer = whole(f[0], "layer", int64_t{1} << 30);
      const int64_t expert = whole(f[1], "expert", int64_t{1} << 30);
      const int64_t tokens = whole(f[2], "tokens", kMaxHistogramTokens);
      if (!m_.is_moe_layer(layer) || layer >= m_.num_hidden_layers + m_.num_nextn_predict_layers)
        fail("layer " + std::to_string(layer) + " is not a MoE layer of the model '" + m_.name + "' (its MoE layers: " +
             describe_layers(layers) + ")");
      if (expert >= h.experts)
        fail("expert " + std::to_string(expert) + " out of range: the model '" + m_.name + "' has " +
             std::to_string(h.experts) + " routed experts (0.." + std::to_string(h.experts - 1) + ")");
      const auto [it, fresh] = seen_on.emplace(std::make_pair(layer, expert), line);
      if (!fresh)
        fail("layer " + std::to_string(layer) + ", expert " + std::to_string(expert) + " given twice (first on line " +
             std::to_string(it->second) + ")");
      auto& counts = h.tokens[layer];
      if (counts.empty()) counts.assign(idx(h.experts), -1);  // -1: no row yet
      counts[idx(expert)] = tokens;
    }
    if (!header) throw_input_error(source_, "", "empty: expected the header '" + std::string(kHeader) + "' and rows");
    for (int64_t l : layers) {
      const std::vector<int64_t>* counts = h.layer(l);
      const std::string where = "layer " + std::to_string(l);
      if (!counts)
        throw_input_error(source_, where, "no rows for MoE layer " + std::to_string(l) +
                                              " (the first missing; every MoE layer of the model needs its histogram, layers " +
                                              describe_layers(layers) + ")");
      bool any = false;
      for (size_t e = 0; e < counts->size(); ++e) {
        if ((*counts)[e] < 0)
          throw_input_error(source_, where, "no row for expert " + std::to_string(e) +
                                                " (every routed expert of a layer needs one; 0 if it got no tokens)");
        any = any || (*counts)[e] > 0;
      }
      if (!any) throw_input_error(source_, where, "every expert has 0 tokens: nothing to replay");
    }
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& reason) const {
    throw_input_error(source_, "line " + std::to_string(line_), reason);
  }

  // A whole number 0..most written in decimal digits.
  int64_t whole(std::string_view s, const char* what, int64_t most) const {
    const std::string shown = "'" + std::string(s.substr(0, 40)) + "'";
    if (s.empty()) fail(std::string(what) + " is empty");
    if (s.front() == '-' && s.size() > 1 && s.find_first_not_of("0123456789", 1) == std::string_view::npos)
      fail(std::string(what) + " must be >= 0, got " + shown);
    if (s.find_first_not_of("0123456789") != std::string_view::npos)
      fail(std::string(what) + " must be a whole number, got " + shown);
    int64_t v = 0;
    for (char c : s) {
      v = v * 10 + (c - '0');
      if (v > most) fail(std::string(what) + " " + shown + " is above the limit of " + std::to_string(most));
    }
    return v;
  }

  const std::string& source_;
  const ModelCard& m_;
  int64_t line_ = 0;
};

}  // namespace

Result<RoutingHistogram> parse_routing_histogram(const std::string& text, const std::string& source,
                                                 const ModelCard& m) {
  return catch_input_errors([&] { return Parser(source, m).parse(text); });
}

Result<RoutingHistogram> load_routing_histogram(const std::string& path, const ModelCard& m) {
  Result<std::string> text = read_regular_file(path, kMaxCardBytes);
  if (!text) return text.error();
  return parse_routing_histogram(text.value(), path, m);
}

}  // namespace tandem
