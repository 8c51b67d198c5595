#include "common/gpu_time.h"

#include <algorithm>

#include "common/signed_index.h"

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
  add_interval(compute, slot, start, end);
}

void GpuTime::add(bool compute, const char* kind, SlotClass slot, double start, double end) {
  double* seconds = nullptr;
  for (const auto& [address, value] : kind_by_address_)
    if (address == kind) {
      seconds = value;
      break;
    }
  if (seconds == nullptr) {
    seconds = &by_kind_[kind];
    kind_by_address_.emplace_back(kind, seconds);
  }
  *seconds += end - start;
  add_interval(compute, slot, start, end);
}

void GpuTime::add_interval(bool compute, SlotClass slot, double start, double end) {
  end_ = std::max(end_, end);
  if (compute) {
    compute_busy_ += end - start;
    by_slot_[idx(slot)] += end - start;
    compute_.emplace_back(start, end);
    compute_reported_until_ = end;
  } else {
    comm_.emplace_back(start, end);
  }
  fold(false);
}

// A comm interval is folded once every compute interval that can overlap it is known: the
// compute stream has reported an end at or past the comm's end (a later compute task starts
// after that). Compute intervals that end before the folded comm's end cannot overlap a later
// comm task (it starts after that end) and are dropped. `all`: the step is over, fold the rest.
void GpuTime::fold(bool all) {
  while (!comm_.empty() && (all || compute_reported_until_ >= comm_.front().second)) {
    const auto [b, e] = comm_.front();
    comm_.pop_front();
    double covered = 0;
    for (const auto& [cb, ce] : compute_) {
      if (cb >= e) break;
      covered += std::max(0.0, std::min(e, ce) - std::max(b, cb));
    }
    exposed_comm_ += (e - b) - covered;
    while (!compute_.empty() && compute_.front().second <= e) compute_.pop_front();
  }
}

void GpuTime::seal() {
  fold(true);
  compute_ = {};
  comm_ = {};
}

}  // namespace tandem
