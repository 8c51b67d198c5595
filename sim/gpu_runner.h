// GpuRunner: one GPU's run of its rank's tasks on two streams, a state machine the EventLoop
// (sim/event_loop.h) drives. A task starts once its stream is free and its dependencies are done;
// it ends when its parts — timers (kernels, analytic transfers) and messages (flows) — have all
// ended. How a comm task's transfer is timed depends on the tier (sim/engine.h): flows (per_pair,
// aggregated), a rendezvous of the EP group on the analytic plan (grouped), or the analytic plan
// alone (replicated). What a GPU did goes into the StepContext's accounts as its tasks end.
#pragma once

#include <memory>
#include <string>

#include "sim/event_loop.h"
#include "sim/step_context.h"

namespace tandem {

class GpuRunner : public EventLoop::Listener {
 public:
  static std::unique_ptr<GpuRunner> create(StepContext& context, EventLoop& loop, int gpu);
  virtual ~GpuRunner() = default;

  virtual void start() = 0;               // launches what can start at time 0
  virtual bool finished() const = 0;      // every task done
  virtual std::string stuck_at() const = 0;  // where it stopped, for the error when it cannot finish
};

}  // namespace tandem
