// The files a user names: inputs read bounded, outputs checked before the work that fills them.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "common/input_error.h"

namespace tandem {

// The bytes of a regular file of at most `max_bytes`, read without ever blocking: anything that
// is not a regular file (a directory, a FIFO, a device such as /dev/zero), and anything larger,
// is an InputError naming `path`. Used for cards, calibrations, kernel rules, traces and results.
Result<std::string> read_regular_file(const std::string& path, uint64_t max_bytes);

// Whether `path` can be written later, checked without creating it: an existing file must be
// writable and not a directory, a new one needs a writable folder. An InputError naming
// `option` (e.g. "--trace") otherwise, so a long run does not fail only at its end.
std::optional<InputError> check_writable(const std::string& path, const std::string& option);

}  // namespace tandem
