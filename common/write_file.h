// write_file: the one way tandem writes an output file (a report, an SVG, a trace, a card).
//
// The text goes to a temporary file beside `path` and is renamed over it once written and
// closed, so a run that fails or is interrupted never leaves a file that looks complete, and a
// write error (a full disk, a folder that does not exist) is reported, not ignored. A path that
// exists and is not a regular file (a device such as /dev/stdout, a FIFO) is written in place.
#pragma once

#include <string>

namespace tandem {

// True when written; otherwise false and `why` says why ("no space left on device", ...).
bool write_file(const std::string& path, const std::string& text, std::string* why = nullptr);

}  // namespace tandem
