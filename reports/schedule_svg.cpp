#include "reports/schedule_svg.h"

#include <algorithm>
#include <cstdio>

#include "common/format.h"
#include "common/signed_index.h"
#include "reports/svg_chart.h"

#include "scenarios/schedules/schedule_table.h"

namespace tandem {

namespace {

struct Colour {
  const char* fill;
  const char* text;
};

// Forward: orange / yellow; backward: green / light blue (by direction or V half); weight: violet.
Colour forward_colour(int path_or_half) { return path_or_half == 0 ? Colour{"#f28e2b", "#000"} : Colour{"#ffe066", "#000"}; }
Colour backward_colour(int path_or_half) { return path_or_half == 0 ? Colour{"#2e8b57", "#fff"} : Colour{"#8ecfef", "#000"}; }
Colour weight_colour() { return {"#9b8ad6", "#fff"}; }

}  // namespace

std::string schedule_svg(const Schedule& s, const UnitCostRun& run, const UnitCosts& c,
                         const std::string& title) {
  const double unit = std::clamp(1800.0 / std::max(1.0, run.step_time), 14.0, 40.0);  // px per time unit: numbers stay readable
  const double row = 30, left = 70, top = 48;
  const double width = left + run.step_time * unit + 20;
  const double axis = 24;  // the time axis under the ranks
  const double height = top + row * s.ranks + axis + 78;
  const double font = std::clamp(unit * std::min(c.F, c.W) * 0.55, 5.0, 12.0);
  // Which shade a chunk gets: its leg (the path for DualPipe, the half of the V for DualPipeV).
  const ScheduleTraits& schedule = schedule_traits(s.kind);
  auto shade = [&](const Chunk& ch) { return schedule.leg_of(s.ranks, ch); };
  auto label = [&](const Chunk& ch) { return ch.micro_batch - ch.path * s.per_path(); };

  std::string o;
  o += strprintf("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" font-family=\"Helvetica,Arial,sans-serif\">\n", width, height);
  o += strprintf("<rect width=\"100%%\" height=\"100%%\" fill=\"#fff\"/>\n");
  o += strprintf("<text x=\"%.0f\" y=\"20\" font-size=\"14\" font-weight=\"bold\">%s</text>\n", left, svg::escape(title).c_str());
  o += strprintf("<text x=\"%.0f\" y=\"36\" font-size=\"11\" fill=\"#444\">unit costs F=%g B=%g W=%g F&amp;B=%g; step %g, max bubble %g</text>\n",
           left, c.F, c.B, c.W, c.FB, run.step_time, run.max_bubble());
  for (int r = 0; r < s.ranks; ++r) {
    const double y = top + r * row;
    o += strprintf("<text x=\"8\" y=\"%.1f\" font-size=\"11\">rank %d</text>\n", y + row * 0.62, r);
    o += strprintf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#f2f2f2\"/>\n", left, y + 2,
             run.step_time * unit, row - 4);
    const auto& slots = s.slots[idx(r)];
    for (size_t i = 0; i < slots.size(); ++i) {
      const Slot& sl = slots[i];
      const SlotTiming& t = run.timeline[idx(r)][i];
      const double x = left + t.start * unit, w = (t.end - t.start) * unit, h = row - 4;
      auto cell = [&](double yy, double hh, Colour col, int num, bool hatch) {
        o += strprintf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\" stroke=\"#333\" stroke-width=\"0.6\"%s/>\n",
                 x, yy, w, hh, col.fill, hatch ? " stroke-dasharray=\"2,1\"" : "");
        if (w > font * 0.9)
          o += strprintf("<text x=\"%.1f\" y=\"%.1f\" font-size=\"%.1f\" text-anchor=\"middle\" fill=\"%s\">%d</text>\n",
                   x + w / 2, yy + hh / 2 + font * 0.35, font, col.text, num);
      };
      switch (sl.kind) {
        case SlotKind::F: cell(y + 2, h, forward_colour(shade(sl.f)), label(sl.f), false); break;
        case SlotKind::B: cell(y + 2, h, backward_colour(shade(sl.b)), label(sl.b), false); break;
        case SlotKind::B_input: cell(y + 2, h, backward_colour(shade(sl.b)), label(sl.b), true); break;
        case SlotKind::W: cell(y + 2, h, weight_colour(), label(sl.b), false); break;
        case SlotKind::FB:
          cell(y + 2, h / 2, forward_colour(shade(sl.f)), label(sl.f), false);
          cell(y + 2 + h / 2, h / 2, backward_colour(shade(sl.b)), label(sl.b), false);
          o += strprintf("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#000\" stroke-width=\"1.6\"/>\n",
                   x, y + 2, w, h);
          break;
      }
    }
  }
  // Time axis, in unit-cost time: a tick every `tick` units, at least 60 px apart.
  {
    const double y0 = top + row * s.ranks + 2;
    double tick = 1;
    for (double step : {1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0})
      if (step * unit >= 60) {
        tick = step;
        break;
      }
    o += strprintf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", left, y0, left + run.step_time * unit, y0);
    for (double t = 0; t <= run.step_time + 1e-9; t += tick) {
      const double x = left + t * unit;
      o += strprintf("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#333\"/>\n", x, y0, x, y0 + 5);
      o += strprintf("<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" text-anchor=\"middle\" fill=\"#444\">%g</text>\n", x, y0 + 16, t);
    }
    o += strprintf("<text x=\"8\" y=\"%.1f\" font-size=\"10\" fill=\"#444\">time (units)</text>\n", y0 + 16);
  }
  // Legend.
  const double ly = top + row * s.ranks + axis + 18;
  double lx = left;
  auto legend = [&](Colour col, const char* text, bool split, Colour col2) {
    if (split) {
      o += strprintf("<rect x=\"%.0f\" y=\"%.0f\" width=\"22\" height=\"7\" fill=\"%s\" stroke=\"#333\"/>", lx, ly, col.fill);
      o += strprintf("<rect x=\"%.0f\" y=\"%.0f\" width=\"22\" height=\"7\" fill=\"%s\" stroke=\"#333\"/>\n", lx, ly + 7, col2.fill);
      o += strprintf("<rect x=\"%.0f\" y=\"%.0f\" width=\"22\" height=\"14\" fill=\"none\" stroke=\"#000\" stroke-width=\"1.6\"/>\n", lx, ly);
    } else {
      o += strprintf("<rect x=\"%.0f\" y=\"%.0f\" width=\"22\" height=\"14\" fill=\"%s\" stroke=\"#333\"/>\n", lx, ly, col.fill);
    }
    o += strprintf("<text x=\"%.0f\" y=\"%.0f\" font-size=\"11\">%s</text>\n", lx + 27, ly + 11, svg::escape(text).c_str());
    lx += 27 + 7.0 * static_cast<double>(std::string(text).size()) + 18;
  };
  const bool two = schedule.legs[1] != nullptr;
  auto leg = [&](int i) { return schedule.legs[i] ? std::string(" (") + schedule.legs[i] + ")" : std::string(); };
  legend(forward_colour(0), ("forward" + leg(0)).c_str(), false, {});
  if (two) legend(forward_colour(1), ("forward" + leg(1)).c_str(), false, {});
  legend(backward_colour(0), ("backward" + leg(0)).c_str(), false, {});
  if (two) legend(backward_colour(1), ("backward" + leg(1)).c_str(), false, {});
  legend(weight_colour(), "weight (W)", false, {});
  legend(forward_colour(0), "overlapped forward & backward", true, backward_colour(0));
  o += strprintf("<text x=\"%.0f\" y=\"%.0f\" font-size=\"10\" fill=\"#444\">dashed border: backward for inputs only (its weight part runs in a later W); numbers: micro-batch within its direction</text>\n",
           left, ly + 34);
  o += "</svg>\n";
  return o;
}

}  // namespace tandem
