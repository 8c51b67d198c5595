// Charts as inline SVG for the HTML report: tandem draws its own (no chart library, no network).
// Each function returns one <svg> element sized in CSS pixels, with a <title> on every mark so a
// hover shows the exact value. Values format through a caller's function (seconds, bytes, ...).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace tandem::svg {

using Format = std::function<std::string(double)>;

struct Series {
  std::string name;
  std::string color;  // CSS colour
  std::vector<double> values;  // one per category (row or x position); NaN: no point
};

// "1 2 5" steps from 0 (or lo) to at least hi, about `count` of them.
std::vector<double> nice_ticks(double lo, double hi, int count = 6);

std::string escape(const std::string& text);  // for XML text and attributes

// One horizontal bar per row, its segments stacked in series order; a legend on top.
// `reference` > 0 draws a dashed line there, as grouped_bars does.
std::string stacked_bars(const std::vector<std::string>& rows, const std::vector<Series>& stacks, const Format& format,
                         const std::string& css_class, double reference = 0, const std::string& reference_label = "",
                         int width = 900);

// Horizontal bars, the series side by side per row. `reference` > 0 draws a dashed line there
// (HBM capacity, the balanced share); log_scale for values spanning orders of magnitude.
std::string grouped_bars(const std::vector<std::string>& rows, const std::vector<Series>& series, const Format& format,
                         const std::string& css_class, double reference = 0, const std::string& reference_label = "",
                         bool log_scale = false, int width = 900);

// Points joined by lines over categorical x positions, one line per series.
std::string line_chart(const std::vector<std::string>& x, const std::string& x_label, const std::vector<Series>& series,
                       const Format& format, const std::string& y_label, const std::string& css_class, int width = 640);

}  // namespace tandem::svg
