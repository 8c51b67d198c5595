// Trace: what ran where and when — the one output format of both engines (sim and exec), so a
// prediction and a measurement compare event by event.
//
// One event per task: which GPU (and its pipeline rank), which stream, what kind of task (the
// Program's TaskKind names), which layer block, micro-batch and stage, start and end in seconds
// from the start of the step, and the FLOPs and bytes it moved. Written as Chrome/Perfetto JSON
// (open in ui.perfetto.dev or chrome://tracing) for people, and as CSV for tools.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "common/input_error.h"

namespace tandem {

struct TraceEvent {
  int gpu = 0;
  int rank = 0;             // pipeline rank
  std::string stream;       // "compute" or "comm"
  std::string kind;         // TaskKind name: attn_f, dispatch_b, pp_send, ...
  int block = -1;           // workload block (layer), -1 if none
  int micro_batch = -1;
  int stage = -1;
  double start = 0, end = 0;  // seconds
  double flops = 0, bytes = 0;
  int slot = -1;            // the rank's schedule slot (-1: end-of-step tasks)
};

struct Trace {
  std::string engine;    // "sim" or "exec"
  std::string scenario;
  std::string program;   // the Program's digest (program_digest): traces of one program align
  std::vector<TraceEvent> events;

  // Writes Chrome trace-event JSON: one process per GPU, one thread per stream, times in µs.
  // `gpus` limits the output to the first GPUs (0: all). Returns false if the file can't be written.
  bool write_perfetto(const std::string& path, int gpus = 0) const;
  bool write_csv(const std::string& path) const;

  // The GPU that stands for each pipeline rank in comparisons and timelines: its lowest-numbered
  // one (replica 0 when it was traced). rank -> GPU.
  std::map<int, int> gpu_per_rank() const;
};

struct ChromeTrace;

// Reads a trace that write_perfetto wrote (either engine's). Anything else, a profiler trace
// included, is an InputError naming the file (profiler traces go through `tandem calibrate`).
Result<Trace> read_trace(const std::string& path);
// The same from a trace already read (its file named in errors).
Result<Trace> trace_from(const ChromeTrace& c);

}  // namespace tandem
