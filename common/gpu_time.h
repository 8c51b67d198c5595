// GpuTime: where one GPU's step went, folded from its tasks — the one accounting of both engines.
//
// The simulator folds every simulated GPU's tasks as they finish (so a 2048-GPU run needs no
// 2048-GPU trace); reports/ folds the events of a trace file the same way, so a prediction and a
// measurement are summed by the same code.
//
// Categories are the ones DeepSeek's papers draw a rank's time in: compute in lone forward (F),
// lone backward (B: a full backward or its input-gradient half), deferred weight-gradient (W) and
// overlapped forward-and-backward (F&B) slots, the end-of-step compute (optimizer), communication
// that no compute hides (exposed comm), and time both streams idle (bubble). Compute tasks run one
// at a time on their stream, so the compute categories add up; exposed comm is the comm stream's
// busy time minus its overlap with compute; bubble is what remains of the step.
#pragma once

#include <array>
#include <deque>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "common/signed_index.h"

namespace tandem {

// The schedule slot a compute task ran in, as a category.
enum class SlotClass { f, b, w, fb, end_of_step };
inline constexpr int kSlotClasses = 5;
const char* to_string(SlotClass c);  // "F", "B", "W", "F&B", "optimizer"

class GpuTime {
 public:
  GpuTime() = default;
  GpuTime(int gpu, int rank) : gpu_(gpu), rank_(rank) {}

  // One finished task. Tasks of a stream arrive in the order they ran (each stream runs one task
  // at a time); the two streams may interleave. Exposed communication is folded as soon as the
  // compute stream has reported past a comm task's end, so a GPU holds only the intervals of the
  // last few tasks, not its whole step.
  void add(bool compute, const std::string& kind, SlotClass slot, double start, double end);
  // The same, for a kind name that lives as long as this GpuTime (a string literal, as
  // to_string(TaskKind) gives): looked up by its address first, with no string compared.
  void add(bool compute, const char* kind, SlotClass slot, double start, double end);
  // Folds what is left into exposed communication (call once, after the last add).
  void seal();

  int gpu() const { return gpu_; }
  int rank() const { return rank_; }
  double end() const { return end_; }                   // when its last task ended
  double compute_busy() const { return compute_busy_; }
  double compute_in(SlotClass c) const { return by_slot_[idx(c)]; }
  double exposed_comm() const { return exposed_comm_; }  // valid after seal()
  const std::map<std::string, double>& seconds_by_kind() const { return by_kind_; }  // both streams

 private:
  int gpu_ = -1, rank_ = -1;
  double end_ = 0, compute_busy_ = 0, exposed_comm_ = 0;
  std::array<double, kSlotClasses> by_slot_{};
  std::map<std::string, double> by_kind_;
  std::vector<std::pair<const char*, double*>> kind_by_address_;  // into by_kind_'s (stable) values
  // Intervals not yet folded: comm tasks whose overlapping compute may still be reported, and
  // the compute tasks that may overlap them or later comm tasks.
  std::deque<std::pair<double, double>> compute_, comm_;
  double compute_reported_until_ = 0;

  void add_interval(bool compute, SlotClass slot, double start, double end);
  void fold(bool all);
};

}  // namespace tandem
