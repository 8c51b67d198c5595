#include "common/trace.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/chrome_trace.h"
#include "common/signed_index.h"
#include "common/write_file.h"

namespace tandem {

bool Trace::write_perfetto(const std::string& path, int gpus) const {
  nlohmann::json events_json = nlohmann::json::array();
  std::vector<bool> named;
  for (const TraceEvent& e : events) {
    if (gpus > 0 && e.gpu >= gpus) continue;
    if (idx(e.gpu) >= named.size()) named.resize(idx(e.gpu) + 1, false);
    if (!named[idx(e.gpu)]) {
      named[idx(e.gpu)] = true;
      events_json.push_back({{"ph", "M"}, {"name", "process_name"}, {"pid", e.gpu},
                             {"args", {{"name", "gpu " + std::to_string(e.gpu) + " (pipeline rank " +
                                                    std::to_string(e.rank) + ")"}}}});
      events_json.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", e.gpu}, {"tid", 0}, {"args", {{"name", "compute"}}}});
      events_json.push_back({{"ph", "M"}, {"name", "thread_name"}, {"pid", e.gpu}, {"tid", 1}, {"args", {{"name", "comm"}}}});
    }
    events_json.push_back({{"ph", "X"},
                           {"name", e.kind},
                           {"cat", e.stream},
                           {"pid", e.gpu},
                           {"tid", e.stream == "compute" ? 0 : 1},
                           {"ts", e.start * 1e6},
                           {"dur", (e.end - e.start) * 1e6},
                           {"args", {{"block", e.block}, {"micro_batch", e.micro_batch}, {"stage", e.stage},
                                     {"slot", e.slot}, {"rank", e.rank}, {"flops", e.flops}, {"bytes", e.bytes}}}});
  }
  nlohmann::json doc{{"traceEvents", events_json},
                     {"displayTimeUnit", "ms"},
                     {"otherData", {{"engine", engine}, {"scenario", scenario}, {"program", program}}}};
  return write_file(path, doc.dump() + "\n");
}

bool Trace::write_csv(const std::string& path) const {
  std::ostringstream out;
  out << "gpu,rank,stream,kind,block,micro_batch,stage,slot,start_s,end_s,flops,bytes\n";
  out.precision(12);
  for (const TraceEvent& e : events)
    out << e.gpu << ',' << e.rank << ',' << e.stream << ',' << e.kind << ',' << e.block << ',' << e.micro_batch
        << ',' << e.stage << ',' << e.slot << ',' << e.start << ',' << e.end << ',' << e.flops << ',' << e.bytes << '\n';
  return write_file(path, out.str());
}

std::map<int, int> Trace::gpu_per_rank() const {
  std::map<int, int> out;
  for (const TraceEvent& e : events) {
    auto [it, added] = out.try_emplace(e.rank, e.gpu);
    if (!added) it->second = std::min(it->second, e.gpu);
  }
  return out;
}

Result<Trace> read_trace(const std::string& path) {
  Result<ChromeTrace> read = read_chrome_trace(path);
  if (!read) return read.error();
  return trace_from(read.value());
}

Result<Trace> trace_from(const ChromeTrace& c) {
  const std::string& path = c.file;
  if (c.format != "tandem")
    return InputError{path, "otherData.engine",
                      "missing: not a trace tandem wrote (a profiler trace goes through `tandem calibrate`)"};
  Trace t;
  t.engine = c.engine;
  t.scenario = c.scenario;
  t.program = c.program_digest;
  for (const TraceKernel& k : c.kernels) {
    TraceEvent e;
    e.gpu = k.device;
    e.rank = k.rank;
    e.stream = k.stream == 0 ? "compute" : "comm";
    e.kind = k.name;
    e.block = k.block_index;
    e.micro_batch = k.micro_batch;
    e.stage = k.stage;
    e.slot = k.slot;
    e.start = k.start_us / 1e6;
    e.end = (k.start_us + k.dur_us) / 1e6;
    e.flops = k.flops;
    e.bytes = k.bytes;
    if (e.rank < 0) return InputError{path, "traceEvents[].args.rank", "missing on a " + e.kind + " task of gpu " + std::to_string(e.gpu)};
    t.events.push_back(std::move(e));
  }
  return t;
}

}  // namespace tandem
