#include "common/gpu_time.h"

#include <algorithm>

namespace tandem {

const char* to_string(SlotClass c) {
  switch (c) {
    case SlotClass::f: return "F";
    case SlotClass::b: return "B";
    case SlotClass::w: return "W";
    case SlotClass::fb: return "F&B";
    case SlotClass::end_of_step: return "optimizer";
  }
  return "?";
}

void GpuTime::add(bool compute, const std::string& kind, SlotClass slot, double start, double end) {
  by_kind_[kind] += end - start;
  end_ = std::max(end_, end);
  if (compute) {
    compute_busy_ += end - start;
    by_slot_[static_cast<size_t>(slot)] += end - start;
    compute_.push_back({start, end});
  } else {
    comm_.push_back({start, end});
  }
}

void GpuTime::seal() {
  // Each stream's intervals are disjoint and in order; sweep the comm intervals over the compute
  // ones and keep what no compute covers.
  double total = 0;
  size_t c = 0;
  for (const auto& [b, e] : comm_) {
    double covered = 0;
    while (c < compute_.size() && compute_[c].second <= b) ++c;
    for (size_t k = c; k < compute_.size() && compute_[k].first < e; ++k)
      covered += std::max(0.0, std::min(e, compute_[k].second) - std::max(b, compute_[k].first));
    total += (e - b) - covered;
  }
  exposed_comm_ = total;
  compute_ = {};
  comm_ = {};
}

}  // namespace tandem
