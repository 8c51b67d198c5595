// A trace event of one task, its fields set by name (TraceEvent grows fields), for tests that
// build traces by hand.
#pragma once

#include <string>

#include "common/trace.h"

namespace tandem::test {

inline TraceEvent task(int gpu, const std::string& stream, const std::string& kind, int block, int micro_batch,
                       int stage, double start_s, double end_s) {
  TraceEvent e;
  e.gpu = gpu;
  e.rank = gpu;
  e.stream = stream;
  e.kind = kind;
  e.block = block;
  e.micro_batch = micro_batch;
  e.stage = stage;
  e.start = start_s;
  e.end = end_s;
  return e;
}

}  // namespace tandem::test
