// tandem_gpu_tests <check>: runs one check of the CUDA backend (gpu_check.h) and exits 0 (pass),
// 1 (fail), 77 (skipped: no CUDA device, or the check says why) or 2 (unknown check).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <string>

#include "exec/backends/cuda/infra/device_query.h"
#include "tests/gpu/gpu_check.h"

namespace tandem::gputest {

namespace {
int failures = 0;
std::map<std::string, void (*)()>& registry() {
  static std::map<std::string, void (*)()> r;
  return r;
}
}  // namespace

void expect(bool ok, const std::string& what) {
  if (ok) return;
  ++failures;
  std::printf("FAIL: %s\n", what.c_str());
}

void skip(const std::string& why) {
  std::printf("SKIP: %s\n", why.c_str());
  std::fflush(stdout);
  std::exit(77);
}

int failure_count() { return failures; }
void set_failure_count(int n) { failures = n; }

Registrar::Registrar(const char* name, void (*check)()) { registry()[name] = check; }

}  // namespace tandem::gputest

int main(int argc, char** argv) {
  using namespace tandem::gputest;
  const std::string check = argc > 1 ? argv[1] : "";
  const auto it = registry().find(check);
  if (it == registry().end()) {
    std::printf("usage: tandem_gpu_tests <check>; checks:");
    for (const auto& [name, fn] : registry()) std::printf(" %s", name.c_str());
    std::printf("\n");
    return 2;
  }
  // This binary links the CUDA backend itself (no module to load).
  const tandem::cuda::DeviceQuery q = tandem::cuda::query_devices();
  if (q.count == 0) {
    std::printf("SKIP: %s\n", q.detail.c_str());
    return 77;
  }
  std::printf("device: %s\n", q.detail.c_str());
  try {
    it->second();
  } catch (const std::exception& e) {
    std::printf("FAIL: %s: exception: %s\n", check.c_str(), e.what());
    return 1;
  }
  std::printf("%s: %s (%d failures)\n", check.c_str(), failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}
