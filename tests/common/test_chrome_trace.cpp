#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "../task_event.h"
#include "../temp_dir.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/chrome_trace.h"
#include "common/sha256.h"
#include "common/trace.h"
#include "tests/test_paths.h"

using namespace tandem;
using tandem::test::TempDir;
namespace fs = std::filesystem;

namespace {


using test::task;

InputError error_of(const std::string& path) {
  Result<ChromeTrace> t = read_chrome_trace(path);
  REQUIRE_FALSE(t.ok());
  return t.error();
}

const std::string kKernel =
    R"({"ph":"X","cat":"kernel","name":"k","pid":0,"tid":7,"ts":10,"dur":5,"args":{"stream":7,"correlation":1}})";

}  // namespace

TEST_CASE("sha256 gives the FIPS 180-4 test vectors", "[calibrate]") {
  CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1'000'000, 'a');
  CHECK(sha256_hex(million) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Fed in uneven pieces (across block boundaries), the digest is the same.
  Sha256 s;
  for (size_t at = 0, step = 1; at < million.size(); at += step, step = step % 97 + 13)
    s.update(million.data() + at, std::min(step, million.size() - at));
  CHECK(s.hex() == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // 55 and 56 bytes: the length still fits in the last block, or just does not.
  CHECK(sha256_hex(std::string(55, 'a')) == "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  CHECK(sha256_hex(std::string(56, 'a')) == "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");

  TempDir dir;
  CHECK(sha256_file(dir.write("abc.txt", "abc")) == sha256_hex("abc"));
  CHECK_FALSE(sha256_file((dir.path / "missing").string()).has_value());
}

TEST_CASE("chrome trace: the DeepSeek excerpt reads with its devices, launches and ranges", "[calibrate]") {
  const std::string path = test::repo("tests/data/train-excerpt.json");
  Result<ChromeTrace> r = read_chrome_trace(path);
  INFO((r.ok() ? "" : r.error().message()));
  REQUIRE(r.ok());
  const ChromeTrace& t = r.value();
  CHECK(t.format == "pytorch_profiler");
  CHECK(t.device_name == "NVIDIA H800");
  CHECK(t.device_sms == 132);
  CHECK(t.rank == 0);
  CHECK(t.world_size == 64);
  CHECK(t.trace_name == "traces/prof_ep64_tp1_varsm_hidden7168_seqlen4096.json");
  CHECK(t.sha256 == sha256_file(path));

  // 128 kernels, 2 memcpys, 3 memsets; each has its launch; 131 cpu_ops + 7 annotations.
  REQUIRE(t.kernels.size() == 133);
  int kernels = 0, memcpys = 0, memsets = 0, comm_stream = 0;
  for (const TraceKernel& k : t.kernels) {
    kernels += k.category == "kernel";
    memcpys += k.category == "gpu_memcpy";
    memsets += k.category == "gpu_memset";
    comm_stream += k.stream == 27;
    CHECK(k.device == 0);
    CHECK(k.correlation >= 0);
  }
  CHECK(kernels == 128);
  CHECK(memcpys == 2);
  CHECK(memsets == 3);
  CHECK(comm_stream == 6);  // DeepEP: layout, notify, dispatch of two dispatch(F) phases
  CHECK(t.launches.size() == 133);
  CHECK(t.ranges.size() == 138);
  CHECK(std::is_sorted(t.kernels.begin(), t.kernels.end(),
                       [](const TraceKernel& a, const TraceKernel& b) { return a.start_us < b.start_us; }));

  // FlashAttention-3's forward: its grid, block, stream and duration as in the file.
  auto fa = std::find_if(t.kernels.begin(), t.kernels.end(), [](const TraceKernel& k) {
    return k.name.find("flash::compute_attn_ws") != std::string::npos;
  });
  REQUIRE(fa != t.kernels.end());
  CHECK(fa->dur_us == 1248);
  CHECK(fa->stream == 7);
  CHECK(fa->correlation == 45028);
  CHECK(fa->grid == std::array<int64_t, 3>{32, 128, 1});
  CHECK(fa->grid_size() == 4096);
  CHECK(fa->block == std::array<int64_t, 3>{384, 1, 1});
  CHECK(fa->start_us == 1740461679473654.0);
  auto memcpy = std::find_if(t.kernels.begin(), t.kernels.end(),
                             [](const TraceKernel& k) { return k.category == "gpu_memcpy"; });
  REQUIRE(memcpy != t.kernels.end());
  CHECK(memcpy->grid_size() == 0);

  // The launches of the autograd thread are read with their own thread id.
  const TraceLaunch* gate_bwd = nullptr;
  for (const TraceLaunch& l : t.launches)
    if (l.correlation == 47671) gate_bwd = &l;
  REQUIRE(gate_bwd);
  CHECK(gate_bwd->tid == 2571);
  CHECK(gate_bwd->pid == 1166);
}

TEST_CASE("chrome trace: a tandem trace reads one task per event with its kind as phase hint", "[calibrate]") {
  Trace trace;
  trace.engine = "sim";
  trace.scenario = "scenarios/tiny.yaml";
  trace.events.push_back(task(0, "compute", "attn_f", 3, 1, 0, 0.0, 10e-6));
  trace.events.push_back(task(0, "comm", "dispatch_f", 3, 1, 0, 10e-6, 25e-6));
  trace.events.push_back(task(1, "compute", "mlp_b", 4, 2, 1, 5e-6, 7e-6));
  TempDir dir;
  const std::string path = (dir.path / "sim.json").string();
  REQUIRE(trace.write_perfetto(path));

  Result<ChromeTrace> r = read_chrome_trace(path);
  INFO((r.ok() ? "" : r.error().message()));
  REQUIRE(r.ok());
  const ChromeTrace& t = r.value();
  CHECK(t.format == "tandem");
  CHECK(t.engine == "sim");
  CHECK(t.scenario == "scenarios/tiny.yaml");
  CHECK(t.launches.empty());
  REQUIRE(t.kernels.size() == 3);
  const TraceKernel& a = t.kernels[0];
  CHECK(a.name == "attn_f");
  CHECK(a.category == "task");
  CHECK(a.phase_hint == "attn_f");
  CHECK(a.stream == 0);
  CHECK(a.device == 0);
  CHECK(a.block_index == 3);
  CHECK(a.micro_batch == 1);
  CHECK(a.stage == 0);
  CHECK(a.dur_us == Approx(10));
  const TraceKernel& m = t.kernels[1];  // in start order: mlp_b starts at 5 µs
  CHECK(m.name == "mlp_b");
  CHECK(m.device == 1);
  CHECK(m.block_index == 4);
  const TraceKernel& d = t.kernels[2];
  CHECK(d.phase_hint == "dispatch_f");
  CHECK(d.stream == 1);
  CHECK(d.start_us == Approx(10));
  CHECK(d.dur_us == Approx(15));
}

TEST_CASE("chrome trace: files that are not traces are errors naming the file", "[calibrate]") {
  TempDir dir;

  SECTION("missing, a directory, a device, a FIFO, too large") {
    const std::string missing = (dir.path / "missing.json").string();
    InputError e = error_of(missing);
    CHECK(e.file == missing);
    CHECK_THAT(e.reason, Catch::Contains("no such file"));

    e = error_of(dir.path.string());
    CHECK(e.file == dir.path.string());
    CHECK_THAT(e.reason, Catch::Contains("not a regular file (a directory)"));

    e = error_of("/dev/null");
    CHECK(e.file == "/dev/null");
    CHECK_THAT(e.reason, Catch::Contains("not a regular file (a character device)"));

    // A FIFO with no writer: refused at once, never waited on.
    const std::string fifo = (dir.path / "fifo").string();
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    e = error_of(fifo);
    CHECK_THAT(e.reason, Catch::Contains("not a regular file (a FIFO)"));

    // Sparse: takes no disk space, refused by its size before anything is read.
    const std::string big = dir.write("big.json", "");
    fs::resize_file(big, kMaxTraceBytes + 1);
    e = error_of(big);
    CHECK_THAT(e.reason, Catch::Contains("larger than"));
  }

  SECTION("not JSON, no traceEvents, duplicate keys") {
    InputError e = error_of(dir.write("empty.json", ""));
    CHECK_THAT(e.reason, Catch::Contains("not valid JSON"));
    e = error_of(dir.write("text.json", "kernels ran"));
    CHECK(e.key.empty());
    CHECK_THAT(e.reason, Catch::Contains("not valid JSON"));
    e = error_of(dir.write("cut.json", R"({"traceEvents":[)" + kKernel));
    CHECK_THAT(e.reason, Catch::Contains("not valid JSON"));
    e = error_of(dir.write("array.json", "[" + kKernel + "]"));
    CHECK_THAT(e.reason, Catch::Contains("traceEvents"));
    e = error_of(dir.write("none.json", R"({"schemaVersion":1})"));
    CHECK(e.key == "traceEvents");
    e = error_of(dir.write("notlist.json", R"({"traceEvents":{"a":1}})"));
    CHECK(e.key == "traceEvents");
    const std::string dup = dir.write(
        "dup.json", R"({"traceEvents":[)" + kKernel +
                        R"(,{"ph":"X","cat":"kernel","name":"k","ts":1,"dur":2,"args":{"stream":7,"stream":23}}]})");
    e = error_of(dup);
    CHECK(e.file == dup);
    CHECK(e.key == "traceEvents[1].args.stream");
    CHECK_THAT(e.reason, Catch::Contains("twice"));
  }

  SECTION("bad events name their key") {
    const auto with = [&](const std::string& event) {
      return dir.write("e.json", R"({"traceEvents":[)" + kKernel + "," + event + "]}");
    };
    InputError e = error_of(with(R"({"ph":"X","cat":"kernel","name":"k","ts":1,"dur":-2,"args":{"stream":7}})"));
    CHECK(e.key == "traceEvents[1].dur");
    CHECK_THAT(e.reason, Catch::Contains("negative"));
    CHECK_THAT(e.message(), Catch::StartsWith(dir.path.string()));
    e = error_of(with(R"({"ph":"X","cat":"cpu_op","name":"aten::mm","ts":"12","dur":2})"));
    CHECK(e.key == "traceEvents[1].ts");
    e = error_of(with(R"({"ph":"X","cat":"kernel","name":"k","ts":1,"args":{"stream":7}})"));
    CHECK(e.key == "traceEvents[1].dur");
    e = error_of(with(R"({"ph":"X","cat":"kernel","name":"k","ts":1,"dur":2,"args":{"correlation":3}})"));
    CHECK(e.key == "traceEvents[1].args.stream");
    e = error_of(with(R"({"ph":"X","cat":"gpu_memcpy","name":"Memcpy","ts":1,"dur":2})"));
    CHECK(e.key == "traceEvents[1].args.stream");
    e = error_of(with(R"({"ph":"X","cat":"kernel","name":"k","ts":1,"dur":2,"args":{"stream":7,"grid":[1,"a",1]}})"));
    CHECK(e.key == "traceEvents[1].args.grid[1]");
    e = error_of(with(R"(7)"));
    CHECK(e.key == "traceEvents[1]");
    e = error_of(with(R"({"name":"k"})"));
    CHECK(e.key == "traceEvents[1].ph");
  }

  SECTION("no GPU activity") {
    InputError e = error_of(dir.write(
        "cpu.json", R"({"traceEvents":[{"ph":"X","cat":"cpu_op","name":"aten::mm","pid":1,"tid":1,"ts":1,"dur":2},)"
                    R"({"ph":"M","name":"process_name","pid":1,"args":{"name":"python"}}]})"));
    CHECK(e.key == "traceEvents");
    CHECK_THAT(e.reason, Catch::Contains("no GPU activity"));
    e = error_of(dir.write("empty-list.json", R"({"traceEvents":[]})"));
    CHECK_THAT(e.reason, Catch::Contains("no GPU activity"));
  }
}
