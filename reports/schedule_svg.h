// Draws a schedule's unit-cost timeline as an SVG, in the style of the DeepSeek-V3 report's
// Figure 5: one row per pipeline rank; forward, backward, weight and overlapped forward&backward
// cells; the two directions (or halves of the V) in their own shades; micro-batch numbers in
// the cells; a legend.
#pragma once

#include <string>

#include "scenarios/schedules/schedule.h"
#include "scenarios/schedules/unit_cost_engine.h"

namespace tandem {

std::string schedule_svg(const Schedule& s, const UnitCostRun& run, const UnitCosts& c,
                         const std::string& title);

}  // namespace tandem
