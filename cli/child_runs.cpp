#include "cli/child_runs.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <thread>
#include <unistd.h>

#include "common/format.h"
#include "common/subprocess.h"

namespace tandem {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

namespace {

// One child; its stderr (the reason a rejected run gives) goes through a temporary file.
ChildRun run_one(const std::string& cmd) {
  char err_path[] = "/tmp/tandem-child-XXXXXX";
  const int fd = mkstemp(err_path);
  if (fd >= 0) close(fd);
  const ProcessRun run = run_process(cmd + " 2>" + shell_quote(err_path));
  ChildRun c{run.code, run.out, {}};
  std::ifstream in(err_path);
  std::getline(in, c.err, '\0');
  std::remove(err_path);
  while (!c.err.empty() && (c.err.back() == '\n' || c.err.back() == ' ')) c.err.pop_back();
  const std::string prefix = "tandem: error: ";
  if (c.err.rfind(prefix, 0) == 0) c.err.erase(0, prefix.size());
  return c;
}

}  // namespace

void progress_line(size_t done, size_t total, double elapsed_s, const std::string& label) {
  if (!isatty(STDERR_FILENO)) return;
  const int width = 30;
  const int filled = static_cast<int>(width * done / std::max<size_t>(1, total));
  std::string eta = "     ";
  if (done > 0 && done < total) {
    const int s = static_cast<int>(elapsed_s / static_cast<double>(done) * static_cast<double>(total - done) + 0.5);
    eta = s >= 60 ? strprintf("ETA %dm%02ds", s / 60, s % 60) : strprintf("ETA %ds", s);
  }
  std::fprintf(stderr, "\r[%s%s] %zu/%zu  %-11s %-50.50s", std::string(static_cast<size_t>(filled), '=').c_str(),
               std::string(static_cast<size_t>(width - filled), ' ').c_str(), done, total, eta.c_str(), label.c_str());
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

std::vector<ChildRun> run_children(const std::vector<std::string>& commands, int jobs,
                                   const std::function<std::string(size_t)>& label) {
  std::vector<ChildRun> results(commands.size());
  std::atomic<size_t> next{0};
  size_t done = 0;
  std::mutex progress;
  const auto t0 = std::chrono::steady_clock::now();
  auto worker = [&] {
    for (size_t i = next++; i < commands.size(); i = next++) {
      results[i] = run_one(commands[i]);
      std::lock_guard<std::mutex> lock(progress);
      ++done;
      progress_line(done, commands.size(), std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(),
                    label(i));
    }
  };
  std::vector<std::thread> threads;
  for (int k = 0; k < std::max(1, std::min<int>(jobs, static_cast<int>(commands.size()))); ++k) threads.emplace_back(worker);
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace tandem
