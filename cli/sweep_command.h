// `tandem sweep <scenario> --vary key=v1,v2,... [--vary ...] [--set k=v]... [--csv FILE] [--json]`
//
// Runs `tandem simulate` for every combination of the varied keys (the cross product), each in
// its own process (SimGrid allows one engine per process), -j of them at a time, with a progress
// count and ETA on a terminal's stderr (cli/child_runs.h); under an MPI launch (`mpirun -n K tandem
// sweep ...`) the K processes split the runs and process 0 prints and writes. The table is the
// same for any -j and any K. A combination the scenario rejects (infeasible plan, memory above
// HBM) is a row with its reason, not a failure of the sweep. The CSV grows as runs finish under
// FILE.incomplete; FILE is written (whole) when every run is in; Ctrl-C (SIGINT, SIGTERM) stops the
// runs and leaves the .incomplete file with the rows that finished.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct SweepOptions {
  std::string path;
  std::vector<std::string> vary;       // "key=v1,v2,..."
  std::vector<std::string> overrides;  // fixed --set for every run
  std::string csv;
  std::string fidelity = "auto";
  std::vector<std::string> calibration;  // --calibration for every run
  int jobs = 1;                           // runs at a time (each its own process)
  bool json = false;
  std::string self;                    // the tandem executable
};

Result<nlohmann::json> sweep(const SweepOptions& o, std::string& text);

}  // namespace tandem
