// The data tandem ships beside its code, and how the binary finds it.
//
// Built in: the files a simulation cannot run without — the default calibration
// (sim/calibration/h800-deepgemm.yaml) and the kernel rules `calibrate` and `compare` use by
// default (sim/calibration/kernel-rules.yaml) — are compiled into the binary
// (cmake/EmbedText.cmake, at build time from the source tree's copies), so a binary copied
// elsewhere, or a source tree moved after the build, predicts the same. The rest (scenario and
// model cards for `validate` and `keys`) is read from the tree: shipped_data_path().
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace tandem {

struct BuiltInFile {
  const char* path;  // relative to the source tree, e.g. "sim/calibration/h800-deepgemm.yaml"
  const char* text;
};

// The built-in copy of `relative`, or nullopt when it is not built in.
std::optional<std::string_view> built_in_file(std::string_view relative);

// How errors and provenance name a built-in file: "sim/calibration/kernel-rules.yaml (shipped)".
std::string built_in_name(std::string_view relative);

// Where tandem's shipped data lives: $TANDEM_DATA_DIR, else $TANDEM_SOURCE_DIR (a relocated
// checkout), else the source tree the binary was built from.
std::string shipped_data_path(const std::string& relative);

// Defined in the generated source (cmake/EmbedText.cmake).
extern const BuiltInFile kBuiltInFiles[];
extern const int kBuiltInFileCount;

}  // namespace tandem
