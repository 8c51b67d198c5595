// ChromeTrace: the GPU activity of a Chrome trace-event JSON file, with what the CPU was doing
// when each piece of it was launched — the raw material of calibration from measured traces.
//
// Two producers are understood:
//  - the PyTorch profiler (format "pytorch_profiler"): `ph: "X"` events of category "kernel",
//    "gpu_memcpy" and "gpu_memset" are GPU activity; "cuda_runtime"/"cuda_driver" events carrying
//    `args.correlation` are the CPU-side launches (a GPU event's `args.correlation` names its
//    launch); "user_annotation" and "cpu_op" events are CPU ranges (phase names, PyTorch ops).
//  - tandem itself (format "tandem", detected by `otherData.engine`, as Trace::write_perfetto
//    writes it): each task event becomes one TraceKernel of category "task" whose phase_hint is the
//    task kind, so it classifies without launches or CPU ranges.
// Everything else (metadata "M", flow "s"/"f", instants, other categories) is skipped.
//
// Contract: read_chrome_trace never blocks and never crashes on bad input. It refuses, as an
// InputError `file: key: reason`: a missing or unreadable file, anything but a regular file (a
// directory, a FIFO, a device such as /dev/null), a file over 1 GiB, text that is not JSON, an
// object key written twice in one JSON object, a document without a `traceEvents` array, an event
// that is not an object or has no string `ph`, an "X" event whose `ts`/`dur` is missing, not a
// finite number, or (dur) negative, a GPU event without an integer `args.stream`, wrong types in
// the fields it reads, and a trace with no GPU activity at all. Keys are JSON paths such as
// `traceEvents[17].dur`.
//
// Times stay in the file's microseconds. Epoch-based profiler timestamps (~1.7e15 µs) are exact
// to 0.25 µs in a double: sub-microsecond digits beyond that are rounded.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"
#include "common/read_file.h"

namespace tandem {

// One GPU activity: a kernel, a memcpy or a memset (or, in a tandem trace, a whole task).
struct TraceKernel {
  std::string name;
  std::string category;  // "kernel", "gpu_memcpy", "gpu_memset" or "task"
  int device = 0;        // args.device, else the event's pid; tandem: the GPU
  int64_t stream = -1;   // tandem: 0 compute, 1 comm
  double start_us = 0, dur_us = 0;
  std::array<int64_t, 3> grid{}, block{};  // zeros when absent (memcpy, memset, tasks)
  int64_t correlation = -1;                // -1 when absent
  std::string phase_hint;                  // tandem traces: the task kind; else empty
  int block_index = -1, micro_batch = -1, stage = -1;  // tandem traces; else -1
  int rank = -1, slot = -1;                            // tandem traces: pipeline rank, schedule slot
  double flops = 0, bytes = 0;                         // tandem traces

  // Total CTAs (grid.x * grid.y * grid.z, saturating); 0 without a grid.
  int64_t grid_size() const;
};

// A CPU-side launch call (cudaLaunchKernel, cuLaunchKernel, cudaMemcpyAsync, ...).
struct TraceLaunch {
  int64_t correlation = -1;
  double ts_us = 0;
  int64_t pid = -1, tid = -1;  // see ChromeTrace on non-numeric pid/tid
  std::string name;
};

// A CPU range: a "user_annotation" (phase names) or a "cpu_op" (a PyTorch op).
struct TraceRange {
  std::string name;
  std::string category;  // "user_annotation" or "cpu_op"
  double start_us = 0, dur_us = 0;
  int64_t pid = -1, tid = -1;
};

struct ChromeTrace {
  std::string file;
  std::string sha256;  // of the file's bytes, as read
  std::string format;  // "pytorch_profiler" or "tandem"
  std::string device_name, trace_name;  // deviceProperties[].name of the busiest device, traceName
  std::string engine, scenario;         // tandem traces: otherData.engine ("sim"/"exec"), .scenario
  std::string program_digest;           // tandem traces: otherData.program (see program_digest)
  int device_sms = 0;                   // deviceProperties[].numSms of that device; 0 if unknown
  int rank = -1, world_size = -1;       // distributedInfo; -1 if absent

  // GPU activity sorted by start (ties: file order). Launches sorted by ts; ranges by start, the
  // longer first on ties (outer before inner). pid/tid written as strings in the file (Chrome
  // allows it) are numbered -2, -3, ... in order of first appearance; -1 means absent.
  std::vector<TraceKernel> kernels;
  std::vector<TraceLaunch> launches;
  std::vector<TraceRange> ranges;
};

Result<ChromeTrace> read_chrome_trace(const std::string& path);

// Parses a JSON document read from `path`; throws InputException naming the file for text that is
// not JSON and naming the key path for a key written twice in one object (nlohmann's parser
// would keep the last silently).
nlohmann::json parse_json_document(const std::string& path, const std::string& text);

inline constexpr uint64_t kMaxTraceBytes = uint64_t{1} << 30;

}  // namespace tandem
