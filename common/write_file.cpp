#include "common/write_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <unistd.h>

namespace tandem {

namespace {

bool put(const std::string& path, const std::string& text, std::string* why) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) {
    if (why) *why = std::strerror(errno);
    return false;
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), f) == text.size() && std::fflush(f) == 0;
  const int write_errno = errno;
  const bool closed = std::fclose(f) == 0;
  if (!written || !closed) {
    if (why) *why = std::strerror(written ? errno : write_errno);
    return false;
  }
  return true;
}

}  // namespace

bool write_file(const std::string& path, const std::string& text, std::string* why) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!ec && fs::exists(st) && !fs::is_regular_file(st)) return put(path, text, why);  // a device or FIFO
  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  if (!put(tmp, text, why)) {
    fs::remove(tmp, ec);
    return false;
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    if (why) *why = ec.message();
    fs::remove(tmp, ec);
    return false;
  }
  return true;
}

}  // namespace tandem
