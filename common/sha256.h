// SHA-256 (FIPS 180-4), for provenance: a calibration derived from a trace records the digest of
// the trace and of the rules that read it, so a result can be traced back to the exact inputs.
//
// Not for security: no constant-time guarantees, no secret data goes through it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tandem {

// Incremental hashing: update() any number of times, then hex() once.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t len);
  void update(std::string_view s) { update(s.data(), s.size()); }
  // The digest as 64 lowercase hex digits. Finishes the hash: call update() no more afterwards.
  std::string hex();

 private:
  void block(const uint8_t* p);

  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(std::string_view data);

// The digest of a file's bytes; nullopt when it cannot be opened or read.
std::optional<std::string> sha256_file(const std::string& path);

}  // namespace tandem
