#include "common/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/signed_index.h"

namespace tandem {

Result<std::string> read_regular_file(const std::string& path, uint64_t max_bytes) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer; the file kind is then checked on the
  // opened descriptor, so nothing can be swapped in between the check and the read.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    return InputError{path, "", err == ENOENT ? "no such file" : "cannot open: " + std::string(std::strerror(err))};
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};

  struct stat st {};
  if (::fstat(fd, &st) != 0) return InputError{path, "", "cannot read: " + std::string(std::strerror(errno))};
  if (!S_ISREG(st.st_mode)) {
    const char* kind = S_ISDIR(st.st_mode)    ? "a directory"
                       : S_ISFIFO(st.st_mode) ? "a FIFO"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISBLK(st.st_mode)  ? "a block device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a plain file";
    return InputError{path, "", std::string("not a regular file (") + kind + ")"};
  }
  const auto too_big = [&](uint64_t n) {
    return InputError{path, "", "larger than the " + std::to_string(max_bytes) + "-byte limit (" +
                                    std::to_string(n) + " bytes)"};
  };
  if (static_cast<uint64_t>(st.st_size) > max_bytes) return too_big(static_cast<uint64_t>(st.st_size));

  std::string text;
  text.reserve(idx(st.st_size));
  std::array<char, 1 << 16> chunk{};
  while (true) {
    const ssize_t n = ::read(fd, chunk.data(), chunk.size());
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      return InputError{path, "", "cannot read: " + std::string(std::strerror(errno))};
    }
    text.append(chunk.data(), idx(n));
    if (text.size() > max_bytes) return too_big(text.size());  // it grew while we read
  }
  return text;
}

std::optional<InputError> check_writable(const std::string& path, const std::string& option) {
  const auto refuse = [&](const std::string& why) {
    return InputError{"<command line>", option, "cannot write '" + path + "': " + why};
  };
  if (path.empty()) return refuse("empty path");
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return refuse("it is a directory");
    if (::access(path.c_str(), W_OK) != 0) return refuse(std::strerror(errno));
    return std::nullopt;
  }
  if (errno != ENOENT) return refuse(std::strerror(errno));
  std::string folder = std::filesystem::path(path).parent_path().string();
  if (folder.empty()) folder = ".";
  if (::stat(folder.c_str(), &st) != 0) return refuse("no folder '" + folder + "'");
  if (!S_ISDIR(st.st_mode)) return refuse("'" + folder + "' is not a folder");
  if (::access(folder.c_str(), W_OK | X_OK) != 0) return refuse(std::strerror(errno));
  return std::nullopt;
}

}  // namespace tandem
