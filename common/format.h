// printf-style formatting into a std::string, for report and table output.
#pragma once

#include <cstdio>
#include <string>

#include "common/signed_index.h"

namespace tandem {

template <class... Args>
std::string strprintf(const char* format, Args... args) {
  const int n = std::snprintf(nullptr, 0, format, args...);
  if (n <= 0) return {};
  std::string out(idx(n) + 1, '\0');
  std::snprintf(out.data(), out.size(), format, args...);
  out.resize(idx(n));
  return out;
}

// A duration with the unit that keeps it readable: "18.969 s", "2.054 ms", "35.2 us".
inline std::string format_seconds(double s) {
  if (s == 0.0) return "0 s";
  if (s >= 1.0) return strprintf("%.3f s", s);
  if (s >= 1e-3) return strprintf("%.3f ms", s * 1e3);
  return strprintf("%.1f us", s * 1e6);
}

// A token count the way people say it: "14.8T", "62.9M".
inline std::string format_count(double n) {
  if (n >= 1e12) return strprintf("%.3gT", n / 1e12);
  if (n >= 1e9) return strprintf("%.3gB", n / 1e9);
  if (n >= 1e6) return strprintf("%.3gM", n / 1e6);
  return strprintf("%.0f", n);
}

// A CSV field: quoted when it holds a comma, a quote or a line break (RFC 4180), so a list value
// such as schedule.stage_layers=[4,4,...] or a reason with commas stays one field.
inline std::string csv_field(const std::string& v) {
  if (v.find_first_of(",\"\n\r") == std::string::npos) return v;
  std::string q = "\"";
  for (char c : v) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

}  // namespace tandem
