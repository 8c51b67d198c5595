#include "cli/child_runs.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <fcntl.h>
#include <fstream>
#include <mutex>
#include <spawn.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include "cli/process_group.h"
#include "common/format.h"
#include "common/signed_index.h"

extern char** environ;

namespace tandem {

std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string rejected_key(const std::string& message) {
  size_t i = 0;
  for (int depth = 0; i < message.size(); ++i) {  // the end of FILE: the first ": " outside brackets
    if (message[i] == '[') ++depth;
    if (message[i] == ']') --depth;
    if (depth == 0 && message.compare(i, 2, ": ") == 0) break;
  }
  const size_t end = message.find(": ", i + 2);
  return i >= message.size() || end == std::string::npos ? "" : message.substr(i + 2, end - i - 2);
}

namespace {

// The running children's process groups, for the signal handler (which may only use
// async-signal-safe calls: atomics and kill).
constexpr int kSlots = 1024;
std::array<std::atomic<pid_t>, kSlots> g_running{};
std::atomic<int> g_signal{0};

extern "C" void stop_children(int sig) {
  g_signal = sig;
  for (auto& slot : g_running)
    if (const pid_t pid = slot.load(); pid > 0) kill(-pid, SIGTERM);
}

// One child through /bin/sh, in its own process group; stdout through a pipe, stderr (the reason
// a rejected run gives) through a temporary file.
ChildRun run_one(const std::string& cmd, std::atomic<pid_t>& slot) {
  ChildRun c;
  char err_path[] = "/tmp/tandem-child-XXXXXX";
  const int err_fd = mkostemp(err_path, O_CLOEXEC);
  int out[2];
  if (err_fd < 0 || pipe2(out, O_CLOEXEC) != 0) {
    if (err_fd >= 0) close(err_fd), std::remove(err_path);
    c.err = "cannot start a child process (no file descriptors or temporary space)";
    return c;
  }
  posix_spawn_file_actions_t files;
  posix_spawn_file_actions_init(&files);
  posix_spawn_file_actions_adddup2(&files, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&files, err_fd, STDERR_FILENO);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t defaults;
  sigemptyset(&defaults);
  sigaddset(&defaults, SIGINT);
  sigaddset(&defaults, SIGTERM);
  posix_spawnattr_setsigdefault(&attr, &defaults);
  posix_spawnattr_setpgroup(&attr, 0);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGDEF);
  std::string command = cmd;
  char sh[] = "/bin/sh", dash_c[] = "-c";
  char* argv[] = {sh, dash_c, command.data(), nullptr};
  pid_t pid = -1;
  const int spawned = posix_spawn(&pid, "/bin/sh", &files, &attr, argv, environ);
  posix_spawn_file_actions_destroy(&files);
  posix_spawnattr_destroy(&attr);
  close(out[1]);
  if (spawned != 0) {
    close(out[0]);
    close(err_fd);
    std::remove(err_path);
    c.err = "cannot start /bin/sh";
    return c;
  }
  slot = pid;
  if (g_signal != 0) kill(-pid, SIGTERM);  // the signal came between the spawn and the slot
  std::array<char, 65536> buf{};
  ssize_t n = 0;
  while ((n = read(out[0], buf.data(), buf.size())) != 0) {
    if (n > 0) c.out.append(buf.data(), idx(n));
    else if (errno != EINTR) break;
  }
  close(out[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  slot = 0;
  c.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  std::ifstream in(err_path);
  std::getline(in, c.err, '\0');
  close(err_fd);
  std::remove(err_path);
  while (!c.err.empty() && (c.err.back() == '\n' || c.err.back() == ' ')) c.err.pop_back();
  const std::string prefix = "tandem: error: ";
  if (c.err.rfind(prefix, 0) == 0) c.err.erase(0, prefix.size());
  return c;
}

// A result travels between processes as "index code out_bytes err_bytes\n", then its stdout and stderr.
void pack(std::string& buf, size_t i, const ChildRun& c) {
  buf += strprintf("%zu %d %zu %zu\n", i, c.code, c.out.size(), c.err.size());
  buf += c.out;
  buf += c.err;
}

void unpack(const std::string& buf, std::vector<ChildRun>& results) {
  size_t pos = 0;
  while (pos < buf.size()) {
    size_t i = 0, out = 0, err = 0;
    int code = 0, used = 0;
    if (std::sscanf(buf.c_str() + pos, "%zu %d %zu %zu\n%n", &i, &code, &out, &err, &used) != 4 || i >= results.size()) return;
    pos += idx(used);
    results[i] = {code, buf.substr(pos, out), buf.substr(pos + out, err)};
    pos += out + err;
  }
}

}  // namespace

InterruptScope::InterruptScope() {
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = stop_children;
  sigemptyset(&sa.sa_mask);
  for (auto [sig, old] : {std::pair{SIGINT, &old_int_}, std::pair{SIGTERM, &old_term_}}) {
    sigaction(sig, nullptr, old);
    if (old->sa_handler != SIG_IGN) sigaction(sig, &sa, nullptr);  // a shell's background job keeps ignoring
  }
}

InterruptScope::~InterruptScope() {
  sigaction(SIGINT, &old_int_, nullptr);
  sigaction(SIGTERM, &old_term_, nullptr);
}

void check_interrupted() {
  if (const int sig = g_signal; sig != 0) throw Interrupted(sig);
}

std::vector<ChildRun> run_children(const std::vector<std::string>& commands, int jobs, const ChildDone& done) {
  const ProcessGroup& group = ProcessGroup::get();
  const std::vector<size_t> mine = group.share(commands.size());
  std::vector<ChildRun> results(commands.size());
  {
    check_interrupted();
    std::atomic<size_t> next{0};
    std::mutex progress;
    auto worker = [&](int slot) {
      for (size_t k = next++; k < mine.size() && g_signal == 0; k = next++) {
        results[mine[k]] = run_one(commands[mine[k]], g_running[idx(slot)]);
        std::lock_guard<std::mutex> lock(progress);
        if (done && g_signal == 0) done(mine[k], results[mine[k]]);
      }
    };
    std::vector<std::thread> threads;
    const int workers = std::max(1, std::min({jobs, kSlots, static_cast<int>(mine.size())}));
    for (int k = 0; k < workers; ++k) threads.emplace_back(worker, k);
    for (std::thread& t : threads) t.join();
  }
  check_interrupted();
  if (group.size() > 1) {
    std::string packed;
    for (size_t i : mine) pack(packed, i, results[i]);
    for (const std::string& theirs : group.all_gather(packed)) unpack(theirs, results);
  }
  return results;
}

Progress::Progress(size_t total)
    : total_(total), shown_(isatty(STDERR_FILENO) && ProcessGroup::get().leader()), t0_(std::chrono::steady_clock::now()) {}

void Progress::step(const std::string& label) {
  ++done_;
  draw(label);
}

void Progress::skip(size_t n) { total_ -= std::min(n, total_ - done_); }

void Progress::reach(size_t done) {
  if (done <= done_) return;
  done_ = done;
  draw("");
}

void Progress::finish() {
  if (shown_ && done_ > 0) std::fprintf(stderr, "\n");
  shown_ = false;
}

void Progress::draw(const std::string& label) {
  if (!shown_) return;
  const int width = 30;
  const size_t total = std::max(total_, done_);
  const int filled = static_cast<int>(width * done_ / std::max<size_t>(1, total));
  std::string eta = "     ";
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  if (done_ > 0 && done_ < total) {
    const int s = static_cast<int>(elapsed / static_cast<double>(done_) * static_cast<double>(total - done_) + 0.5);
    eta = s >= 60 ? strprintf("ETA %dm%02ds", s / 60, s % 60) : strprintf("ETA %ds", s);
  }
  std::fprintf(stderr, "\r[%s%s] %zu/%zu  %-11s %-50.50s", std::string(idx(filled), '=').c_str(),
               std::string(idx(width - filled), ' ').c_str(), done_, total, eta.c_str(), label.c_str());
  std::fflush(stderr);
}

}  // namespace tandem
