// `tandem bench` as a library call, on any machine: bad options are input errors in every build;
// without a CUDA device (or without the CUDA backend) it fails with a clear message, never a
// crash; with a device, a tiny quant benchmark returns the JSON shape the simulator expects.
#include <cstdio>
#include <string>

#include "cli/bench_command.h"
#include "exec/gpu_probe.h"

namespace {
int failures = 0;
void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}
}  // namespace

int main() {
  std::string text;
  tandem::BenchOptions bad;
  bad.what = "gemmm";
  auto r = tandem::bench_command(bad, text);
  expect(!r && r.error().reason.find("gemm, quant or moe-layer") != std::string::npos, "unknown benchmark rejected");
  bad.what = "quant";
  bad.iters = 0;
  r = tandem::bench_command(bad, text);
  expect(!r && r.error().key == "--iters", "--iters 0 rejected");

  tandem::BenchOptions o;
  o.what = "quant";
  o.rows = 256;
  o.cols = 512;
  o.iters = 2;
  o.warmup = 1;
  const tandem::GpuProbe p = tandem::probe_gpus();
  r = tandem::bench_command(o, text);
  if (!p.built_with_cuda) {
    expect(!r && r.error().message().find("no CUDA backend") != std::string::npos, "CUDA-less build says so");
  } else if (p.devices == 0) {
    expect(!r && r.error().message().find("no CUDA device present (cudaGetDeviceCount says") != std::string::npos,
           "no device: clear message");
  } else {
    expect(r.ok(), "quant bench runs");
    if (r) {
      const auto& j = r.value();
      expect(j.contains("calibration") && j["calibration"].contains("name") && j["results"].size() == 4,
             "quant JSON shape");
    }
  }
  if (!r) std::printf("bench_command said: %s\n", r.error().message().c_str());
  std::printf("%s (%d failures)\n", failures == 0 ? "PASS" : "FAIL", failures);
  return failures == 0 ? 0 : 1;
}
