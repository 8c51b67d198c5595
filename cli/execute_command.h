// `tandem execute <scenario> [--backend cpu|cuda] [--cuda-world auto|virtual|nccl] [--steps N] [--check-reference] [--numerics fp32|bf16|fp8]
//  [--bias-update-speed G] [--balance-loss-alpha A] [--trace FILE] [--json] [--set k=v]...` — runs training steps of a scenario on the executor.
// Exit codes: 0 success, 2 bad input (InputError: unknown backend, no CUDA device or no CUDA backend
// built for --backend cuda, scenario too large for the CPU backend naming the key), 3 a rank failed (the message names the rank and the task).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/input_error.h"

namespace tandem {

struct ExecuteOptions {
  std::string path;
  std::vector<std::string> overrides;
  std::string backend = "cpu";
  std::string cuda_world = "auto";  // --backend cuda: auto | virtual | nccl (exec/backends/cuda/cuda_executor.h)
  int steps = 1;
  bool check_reference = false;
  std::string numerics = "fp32";
  std::string trace;
  bool json = false;
  double lr = 1e-3;
  // Aux-loss-free balancing speed γ (deepseek-v3.md §8; 0 = off). The scenario format has no key
  // for it; the value used is printed with the result.
  double bias_update_speed = 0.001;
  // Sequence-wise balance loss α (deepseek-v3.md §1.1; 0 = off), in [0, 1); printed with the result.
  double balance_loss_alpha = 1e-4;
  double mtp_lambda = 0.3;  // MTP loss weight λ (models with num_nextn_predict_layers > 0)
  double router_bias_skew = 0;  // hidden (tests): initial bias offset of experts [0, E/4)
  int fault_rank = -1;  // hidden: make this world rank fail at its fault_at-th communicator call
  long fault_at = 1;
  int timeout_ms = 60'000;
};

// A rank failed: the job stopped (exit code 3).
struct ExecuteFailure {
  std::string message;
};

// Result JSON (or InputError). Sets *failure (and returns an empty object) when a rank failed.
// `leader` is false in the MPI processes that do not host world rank 0 (they print nothing).
Result<nlohmann::json> execute_command(const ExecuteOptions& o, std::string& text, bool& leader,
                                       ExecuteFailure* failure);

}  // namespace tandem
