#include "reports/svg_chart.h"

#include <algorithm>
#include <cmath>

#include "common/format.h"

namespace tandem::svg {

std::vector<double> nice_ticks(double lo, double hi, int count) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / std::max(1, count);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 5.0, 10.0})
    if (raw <= m * mag) {
      step = m * mag;
      break;
    }
  std::vector<double> out;
  for (double v = std::floor(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  if (out.back() < hi) out.push_back(out.back() + step);
  return out;
}

std::string escape(const std::string& text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

constexpr int kRowHeight = 22, kTop = 34, kBottom = 30;

// Room for the longest row label (about 6.5 px a character at 11 px), at least 150 px.
int label_width(const std::vector<std::string>& rows) {
  size_t longest = 0;
  for (const std::string& r : rows) longest = std::max(longest, r.size());
  return std::clamp(static_cast<int>(6.5 * static_cast<double>(longest)) + 16, 150, 560);
}

std::string legend(const std::vector<Series>& series, int x0) {
  std::string out;
  int x = x0;
  for (const Series& s : series) {
    out += strprintf("<rect class=\"legend\" x=\"%d\" y=\"6\" width=\"12\" height=\"12\" fill=\"%s\"/>", x, s.color.c_str());
    out += strprintf("<text x=\"%d\" y=\"16\">%s</text>", x + 16, escape(s.name).c_str());
    x += 26 + 7 * static_cast<int>(s.name.size());
  }
  return out;
}

// The x axis under the bars: ticks, grid lines and their labels.
std::string x_axis(const std::vector<double>& ticks, const std::function<double(double)>& to_x, int y0, int y1,
                   const Format& format) {
  std::string out;
  for (double t : ticks) {
    const double x = to_x(t);
    out += strprintf("<line class=\"grid\" x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>", x, y0, x, y1);
    out += strprintf("<text class=\"tick\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>", x, y1 + 14,
                     escape(format(t)).c_str());
  }
  return out;
}

// A dashed vertical line (a capacity, a balanced share) labelled under the axis.
std::string reference_line(double x, int y0, int y1, const std::string& label) {
  return strprintf("<line class=\"reference\" x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>", x, y0, x, y1) +
         strprintf("<text class=\"reference-label\" x=\"%.1f\" y=\"%d\" text-anchor=\"end\">%s</text>", x - 4, y1 + 26,
                   escape(label).c_str());
}

std::string open_svg(const std::string& css_class, int width, int height) {
  return strprintf("<svg class=\"chart %s\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">",
                   escape(css_class).c_str(), width, height, width, height);
}

}  // namespace

std::string stacked_bars(const std::vector<std::string>& rows, const std::vector<Series>& stacks, const Format& format,
                         const std::string& css_class, double reference, const std::string& reference_label, int width) {
  const int label_w = label_width(rows);
  double top = reference;
  for (size_t r = 0; r < rows.size(); ++r) {
    double sum = 0;
    for (const Series& s : stacks) sum += r < s.values.size() && std::isfinite(s.values[r]) ? s.values[r] : 0;
    top = std::max(top, sum);
  }
  const std::vector<double> ticks = nice_ticks(0, top);
  const double plot = width - label_w - 40;
  auto to_x = [&](double v) { return label_w + v / ticks.back() * plot; };
  const int height = kTop + kRowHeight * static_cast<int>(rows.size()) + kBottom;
  std::string out = open_svg(css_class, width, height) + legend(stacks, label_w);
  out += x_axis(ticks, to_x, kTop - 4, kTop + kRowHeight * static_cast<int>(rows.size()), format);
  for (size_t r = 0; r < rows.size(); ++r) {
    const int y = kTop + kRowHeight * static_cast<int>(r);
    out += strprintf("<text class=\"row-label\" x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>", label_w - 6, y + 15,
                     escape(rows[r]).c_str());
    double at = 0;
    for (const Series& s : stacks) {
      const double v = r < s.values.size() && std::isfinite(s.values[r]) ? s.values[r] : 0;
      if (v <= 0) continue;
      out += strprintf("<rect class=\"bar\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"%d\" fill=\"%s\"><title>%s, %s: %s</title></rect>",
                       to_x(at), y + 3, to_x(at + v) - to_x(at), kRowHeight - 6, s.color.c_str(), escape(rows[r]).c_str(),
                       escape(s.name).c_str(), escape(format(v)).c_str());
      at += v;
    }
  }
  if (reference > 0) out += reference_line(to_x(reference), kTop - 6, kTop + kRowHeight * static_cast<int>(rows.size()), reference_label);
  return out + "</svg>";
}

std::string grouped_bars(const std::vector<std::string>& rows, const std::vector<Series>& series, const Format& format,
                         const std::string& css_class, double reference, const std::string& reference_label,
                         bool log_scale, int width) {
  const int label_w = label_width(rows);
  double lo = INFINITY, hi = reference;
  for (const Series& s : series)
    for (double v : s.values)
      if (std::isfinite(v) && v > 0) {
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
  if (!std::isfinite(lo)) lo = hi > 0 ? hi : 1;
  if (!(hi > 0)) hi = 1;
  const double plot = width - label_w - 40;
  std::vector<double> ticks;
  std::function<double(double)> to_x;
  if (log_scale) {
    const double a = std::floor(std::log10(lo)), b = std::ceil(std::log10(hi));
    for (double e = a; e <= std::max(b, a + 1); ++e) ticks.push_back(std::pow(10.0, e));
    const double la = std::log10(ticks.front()), lb = std::log10(ticks.back());
    to_x = [=](double v) { return label_w + (std::log10(std::max(v, ticks.front())) - la) / (lb - la) * plot; };
  } else {
    ticks = nice_ticks(0, hi);
    const double end = ticks.back();
    to_x = [=](double v) { return label_w + v / end * plot; };
  }
  const int group = static_cast<int>(series.size()) * 10 + 8;
  const int height = kTop + group * static_cast<int>(rows.size()) + kBottom;
  const int bottom = kTop + group * static_cast<int>(rows.size());
  std::string out = open_svg(css_class, width, height) + legend(series, label_w);
  out += x_axis(ticks, to_x, kTop - 4, bottom, format);
  for (size_t r = 0; r < rows.size(); ++r) {
    const int y = kTop + group * static_cast<int>(r);
    out += strprintf("<text class=\"row-label\" x=\"%d\" y=\"%d\" text-anchor=\"end\">%s</text>", label_w - 6,
                     y + group / 2 + 4, escape(rows[r]).c_str());
    for (size_t k = 0; k < series.size(); ++k) {
      const double v = r < series[k].values.size() ? series[k].values[r] : NAN;
      if (!std::isfinite(v) || v <= 0) continue;
      const double x0 = log_scale ? label_w : to_x(0);
      out += strprintf("<rect class=\"bar\" x=\"%.2f\" y=\"%d\" width=\"%.2f\" height=\"9\" fill=\"%s\"><title>%s, %s: %s</title></rect>",
                       x0, y + 4 + 10 * static_cast<int>(k), std::max(0.5, to_x(v) - x0), series[k].color.c_str(),
                       escape(rows[r]).c_str(), escape(series[k].name).c_str(), escape(format(v)).c_str());
    }
  }
  if (reference > 0) out += reference_line(to_x(reference), kTop - 6, bottom, reference_label);
  return out + "</svg>";
}

std::string line_chart(const std::vector<std::string>& x, const std::string& x_label, const std::vector<Series>& series,
                       const Format& format, const std::string& y_label, const std::string& css_class, int width) {
  double hi = 0, lo = INFINITY;
  for (const Series& s : series)
    for (double v : s.values)
      if (std::isfinite(v)) {
        hi = std::max(hi, v);
        lo = std::min(lo, v);
      }
  if (!std::isfinite(lo)) lo = 0;
  const std::vector<double> ticks = nice_ticks(std::min(0.0, lo), hi > 0 ? hi : 1, 5);
  const int left = 90, height = 280, top = 34, bottom = height - 46;
  const double plot_w = width - left - 50;  // room for the last x label
  auto to_y = [&](double v) { return bottom - (v - ticks.front()) / (ticks.back() - ticks.front()) * (bottom - top); };
  auto to_x = [&](size_t i) { return left + (x.size() <= 1 ? plot_w / 2 : plot_w * static_cast<double>(i) / static_cast<double>(x.size() - 1)); };
  // The y label heads the chart on the left, the legend follows it on the same line.
  std::string out = open_svg(css_class, width, height) +
                    strprintf("<text class=\"axis-label\" x=\"4\" y=\"16\">%s</text>", escape(y_label).c_str()) +
                    legend(series, 24 + 7 * static_cast<int>(y_label.size()));
  for (double t : ticks) {
    out += strprintf("<line class=\"grid\" x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>", left, to_y(t), width - 20, to_y(t));
    out += strprintf("<text class=\"tick\" x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>", left - 6, to_y(t) + 4,
                     escape(format(t)).c_str());
  }
  for (size_t i = 0; i < x.size(); ++i)
    out += strprintf("<text class=\"tick\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>", to_x(i), bottom + 16,
                     escape(x[i]).c_str());
  out += strprintf("<text class=\"axis-label\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>", left + plot_w / 2,
                   bottom + 36, escape(x_label).c_str());
  for (const Series& s : series) {
    std::string path;
    for (size_t i = 0; i < s.values.size() && i < x.size(); ++i) {
      if (!std::isfinite(s.values[i])) continue;
      path += strprintf("%s%.1f,%.1f", path.empty() ? "M" : " L", to_x(i), to_y(s.values[i]));
    }
    if (!path.empty())
      out += strprintf("<path class=\"line\" d=\"%s\" stroke=\"%s\" fill=\"none\" stroke-width=\"2\"/>", path.c_str(), s.color.c_str());
    for (size_t i = 0; i < s.values.size() && i < x.size(); ++i)
      if (std::isfinite(s.values[i]))
        out += strprintf("<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"><title>%s = %s, %s: %s</title></circle>",
                         to_x(i), to_y(s.values[i]), s.color.c_str(), escape(x_label).c_str(), escape(x[i]).c_str(),
                         escape(s.name).c_str(), escape(format(s.values[i])).c_str());
  }
  return out + "</svg>";
}

}  // namespace tandem::svg
