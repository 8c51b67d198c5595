#include "common/chrome_trace.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "common/sha256.h"

namespace tandem {

using nlohmann::json;

int64_t TraceKernel::grid_size() const {
  // Saturating: a hostile grid must not overflow into a small (or negative) CTA count.
  int64_t n = 1;
  for (int64_t g : grid) {
    if (g <= 0) return 0;
    n = n > std::numeric_limits<int64_t>::max() / g ? std::numeric_limits<int64_t>::max() : n * g;
  }
  return n;
}

namespace {

std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "a list";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::discarded: return "nothing";
    default: return "a number";
  }
}

std::string shown(const json& v) {
  std::string s = v.dump();
  if (s.size() > 40) s = s.substr(0, 37) + "...";
  return s;
}

// Where each key sits while the parser runs, so a duplicate key can be reported by its path.
class DuplicateKeyCheck {
 public:
  explicit DuplicateKeyCheck(std::string file) : file_(std::move(file)) {}

  bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        next_element();
        frames_.push_back(Frame{event == json::parse_event_t::array_start, -1, {}, {}});
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        if (!frames_.empty()) frames_.pop_back();
        break;
      case json::parse_event_t::key:
        if (!frames_.empty() && parsed.is_string()) {
          Frame& f = frames_.back();
          f.key = parsed.get<std::string>();
          if (!f.keys.insert(f.key).second) throw_input_error(file_, path(), "key written twice in one object");
        }
        break;
      case json::parse_event_t::value:
        next_element();
        break;
    }
    return true;
  }

 private:
  struct Frame {
    bool array = false;
    int64_t index = -1;        // arrays: the element being read
    std::string key;           // objects: the key being read
    std::set<std::string> keys;  // objects: the keys seen
  };

  void next_element() {
    if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
  }

  std::string path() const {
    std::string p;
    for (const Frame& f : frames_) {
      if (f.array) {
        p += "[" + std::to_string(f.index) + "]";
      } else {
        p += (p.empty() ? "" : ".") + f.key;
      }
    }
    return p;
  }

  std::string file_;
  std::vector<Frame> frames_;
};

}  // namespace

json parse_json_document(const std::string& path, const std::string& text) {
  try {
    return json::parse(text, DuplicateKeyCheck(path), /*allow_exceptions=*/true);
  } catch (const json::exception& e) {
    std::string what = e.what();
    if (auto close = what.find("] "); what.rfind("[json.exception", 0) == 0 && close != std::string::npos)
      what = what.substr(close + 2);
    throw_input_error(path, "", "not valid JSON: " + what);
  }
}

namespace {

// Typed access to the fields of one JSON object, errors naming the file and the key path.
class Fields {
 public:
  Fields(const json& obj, const std::string& file, std::string path)
      : obj_(obj), file_(file), path_(std::move(path)) {}

  std::string key(const char* name) const { return path_.empty() ? name : path_ + "." + name; }
  [[noreturn]] void fail(const char* name, const std::string& reason) const {
    throw_input_error(file_, key(name), reason);
  }

  const json* find(const char* name) const {
    auto it = obj_.find(name);
    return it == obj_.end() || it->is_null() ? nullptr : &*it;
  }

  double number(const char* name) const {
    const json* v = find(name);
    if (!v) fail(name, "missing (required)");
    if (!v->is_number()) fail(name, "expected a number, got " + shown(*v));
    const double d = v->get<double>();
    if (!std::isfinite(d)) fail(name, "expected a finite number, got " + shown(*v));
    return d;
  }

  double number_or(const char* name, double fallback) const { return find(name) ? number(name) : fallback; }

  std::optional<int64_t> integer(const char* name) const {
    const json* v = find(name);
    if (!v) return std::nullopt;
    return whole(*v, key(name));
  }

  std::string text(const char* name) const {
    const json* v = find(name);
    if (!v) return {};
    if (!v->is_string()) fail(name, "expected a string, got " + type_name(*v));
    return v->get<std::string>();
  }

  // Missing -> nullptr; present but not an object -> error.
  const json* object(const char* name) const {
    const json* v = find(name);
    if (v && !v->is_object()) fail(name, "expected an object, got " + type_name(*v));
    return v;
  }

  std::array<int64_t, 3> dim3(const char* name) const {
    std::array<int64_t, 3> out{};
    const json* v = find(name);
    if (!v) return out;
    if (!v->is_array() || v->empty() || v->size() > 3) fail(name, "expected a list of 1 to 3 whole numbers");
    for (size_t i = 0; i < v->size(); ++i) out[i] = whole((*v)[i], key(name) + "[" + std::to_string(i) + "]");
    for (size_t i = v->size(); i < 3; ++i) out[i] = 1;
    return out;
  }

  int64_t whole(const json& v, const std::string& k) const {
    if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
    if (v.is_number_unsigned()) {
      if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
        throw_input_error(file_, k, "whole number out of range: " + shown(v));
      return static_cast<int64_t>(v.get<uint64_t>());
    }
    throw_input_error(file_, k, "expected a whole number, got " + shown(v));
  }

 private:
  const json& obj_;
  const std::string& file_;
  std::string path_;
};

// pid and tid: numbers in PyTorch's CPU and GPU events, strings in some (e.g. "Spans").
class Ids {
 public:
  int64_t of(const json* v) {
    if (!v) return -1;
    if (v->is_number_integer()) return v->get<int64_t>();
    if (v->is_string()) {
      auto [it, added] = names_.emplace(v->get<std::string>(), -2 - static_cast<int64_t>(names_.size()));
      return it->second;
    }
    return -1;
  }

 private:
  std::map<std::string, int64_t> names_;
};

int narrow(int64_t v) {
  return static_cast<int>(std::clamp<int64_t>(v, std::numeric_limits<int>::min(), std::numeric_limits<int>::max()));
}

struct DeviceInfo {
  int64_t id = -1;
  std::string name;
  int sms = 0;
};

ChromeTrace parse(const std::string& path, const std::string& text) {
  const json doc = parse_json_document(path, text);
  if (!doc.is_object()) throw_input_error(path, "", "expected a JSON object with `traceEvents`, got " + type_name(doc));

  ChromeTrace t;
  t.file = path;
  t.sha256 = sha256_hex(text);
  Fields top(doc, path, "");

  const json* events = top.find("traceEvents");
  if (!events) top.fail("traceEvents", "missing: not a Chrome trace-event file");
  if (!events->is_array()) top.fail("traceEvents", "expected a list of events, got " + type_name(*events));

  if (const json* other = top.object("otherData")) {
    Fields od(*other, path, "otherData");
    t.engine = od.text("engine");
    t.scenario = od.text("scenario");
    t.program_digest = od.text("program");
  }
  const bool tandem_trace = !t.engine.empty();
  t.format = tandem_trace ? "tandem" : "pytorch_profiler";
  t.trace_name = top.text("traceName");

  std::vector<DeviceInfo> devices;
  if (const json* props = top.find("deviceProperties")) {
    if (!props->is_array()) top.fail("deviceProperties", "expected a list, got " + type_name(*props));
    for (size_t i = 0; i < props->size(); ++i) {
      const std::string k = "deviceProperties[" + std::to_string(i) + "]";
      if (!(*props)[i].is_object()) throw_input_error(path, k, "expected an object, got " + type_name((*props)[i]));
      Fields d((*props)[i], path, k);
      devices.push_back({d.integer("id").value_or(-1), d.text("name"), narrow(d.integer("numSms").value_or(0))});
    }
  }
  if (const json* dist = top.object("distributedInfo")) {
    Fields d(*dist, path, "distributedInfo");
    t.rank = narrow(d.integer("rank").value_or(-1));
    t.world_size = narrow(d.integer("world_size").value_or(-1));
  }

  Ids ids;
  for (size_t i = 0; i < events->size(); ++i) {
    const json& e = (*events)[i];
    const std::string at = "traceEvents[" + std::to_string(i) + "]";
    if (!e.is_object()) throw_input_error(path, at, "expected an event object, got " + type_name(e));
    Fields f(e, path, at);
    const std::string ph = f.text("ph");
    if (ph.empty()) f.fail("ph", "missing (every trace event has a phase type)");
    if (ph != "X") continue;

    const double ts = f.number("ts");
    const double dur = f.number("dur");
    if (dur < 0) f.fail("dur", "must not be negative, got " + shown(e["dur"]));
    const std::string cat = f.text("cat");
    const std::string name = f.text("name");
    const json* args = f.object("args");
    static const json kNoArgs = json::object();
    Fields a(args ? *args : kNoArgs, path, at + ".args");

    if (tandem_trace) {
      if (cat != "compute" && cat != "comm") continue;
      TraceKernel k;
      k.name = name;
      k.category = "task";
      k.device = narrow(f.integer("pid").value_or(0));
      k.stream = cat == "compute" ? 0 : 1;
      k.start_us = ts;
      k.dur_us = dur;
      k.phase_hint = name;
      k.block_index = narrow(a.integer("block").value_or(-1));
      k.micro_batch = narrow(a.integer("micro_batch").value_or(-1));
      k.stage = narrow(a.integer("stage").value_or(-1));
      k.rank = narrow(a.integer("rank").value_or(-1));
      k.slot = narrow(a.integer("slot").value_or(-1));
      k.flops = a.number_or("flops", 0);
      k.bytes = a.number_or("bytes", 0);
      t.kernels.push_back(std::move(k));
    } else if (cat == "kernel" || cat == "gpu_memcpy" || cat == "gpu_memset") {
      TraceKernel k;
      k.name = name;
      k.category = cat;
      const auto stream = a.integer("stream");
      if (!stream) a.fail("stream", "missing (every GPU event names its stream)");
      k.stream = *stream;
      const json* pid = f.find("pid");
      k.device = narrow(a.integer("device").value_or(pid && pid->is_number_integer() ? pid->get<int64_t>() : 0));
      k.start_us = ts;
      k.dur_us = dur;
      k.grid = a.dim3("grid");
      k.block = a.dim3("block");
      k.correlation = a.integer("correlation").value_or(-1);
      t.kernels.push_back(std::move(k));
    } else if (cat == "cuda_runtime" || cat == "cuda_driver") {
      const auto correlation = a.integer("correlation");
      if (!correlation) continue;  // a runtime call that launched nothing (sync, event record)
      t.launches.push_back({*correlation, ts, ids.of(f.find("pid")), ids.of(f.find("tid")), name});
    } else if (cat == "user_annotation" || cat == "cpu_op") {
      t.ranges.push_back({name, cat, ts, dur, ids.of(f.find("pid")), ids.of(f.find("tid"))});
    }
  }
  if (t.kernels.empty())
    top.fail("traceEvents", tandem_trace ? "no task events: nothing ran on a GPU"
                                         : "no GPU activity: no kernel, gpu_memcpy or gpu_memset event");

  std::stable_sort(t.kernels.begin(), t.kernels.end(),
                   [](const TraceKernel& x, const TraceKernel& y) { return x.start_us < y.start_us; });
  std::stable_sort(t.launches.begin(), t.launches.end(),
                   [](const TraceLaunch& x, const TraceLaunch& y) { return x.ts_us < y.ts_us; });
  std::stable_sort(t.ranges.begin(), t.ranges.end(), [](const TraceRange& x, const TraceRange& y) {
    return x.start_us != y.start_us ? x.start_us < y.start_us : x.dur_us > y.dur_us;
  });

  // The device the trace is about: the one with the most GPU events.
  std::map<int, int> per_device;
  for (const TraceKernel& k : t.kernels) ++per_device[k.device];
  const int busiest =
      std::max_element(per_device.begin(), per_device.end(), [](auto& x, auto& y) { return x.second < y.second; })
          ->first;
  auto dev = std::find_if(devices.begin(), devices.end(), [&](const DeviceInfo& d) { return d.id == busiest; });
  if (dev == devices.end() && !devices.empty()) dev = devices.begin();
  if (dev != devices.end()) {
    t.device_name = dev->name;
    t.device_sms = dev->sms;
  }
  return t;
}

}  // namespace

Result<ChromeTrace> read_chrome_trace(const std::string& path) {
  Result<std::string> text = read_regular_file(path, kMaxTraceBytes);
  if (!text) return text.error();
  return catch_input_errors([&] { return parse(path, text.value()); });
}

}  // namespace tandem
