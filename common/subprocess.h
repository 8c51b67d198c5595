// Runs a shell command and collects its exit code and standard output (tandem sweep's child
// runs, and tests that run the tandem binary).
#pragma once

#include <array>
#include <cstdio>
#include <string>
#include <sys/wait.h>

namespace tandem {

struct ProcessRun {
  int code = -1;    // exit status, -1 if it did not exit normally
  std::string out;  // what it printed on stdout
};

inline ProcessRun run_process(const std::string& command) {
  ProcessRun r;
  FILE* p = popen(command.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf{};
  size_t n = 0;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace tandem
