#include "exec/runtime/executor.h"

#include <algorithm>

namespace tandem::runtime {

double StepStats::worst_load() const {
  double w = 0;
  for (double x : load_max_over_mean) w = std::max(w, x);
  return w;
}

}  // namespace tandem::runtime
