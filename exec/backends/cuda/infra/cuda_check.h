// Errors of the CUDA backend as exceptions that carry the runtime's / cuBLAS's status string.
// Host code only (compiled by g++ or nvcc).
#pragma once

#include <cstddef>
#include <stdexcept>
#include <string>

#include <cuda_runtime_api.h>

namespace tandem::cuda {

class CudaError : public std::runtime_error {
 public:
  CudaError(cudaError_t code, const std::string& what) : std::runtime_error(what), code_(code) {}
  cudaError_t code() const { return code_; }

 private:
  cudaError_t code_;
};

// Throws CudaError("<what>: <cudaGetErrorName>: <cudaGetErrorString>") unless err == cudaSuccess.
inline void check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  throw CudaError(err, std::string(what) + ": " + cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

// After a kernel launch: reports launch-configuration errors (not asynchronous faults).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// A device allocation owned by one object (move-only). Either sized once (the constructor) or
// used as a grow-only workspace (reserve), which reallocates only when asked for more.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t count) : count_(count) {
    if (count > 0) check(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)), "cudaMalloc");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(o.ptr_), count_(o.count_) { o.ptr_ = nullptr; o.count_ = 0; }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      reset();
      ptr_ = o.ptr_;
      count_ = o.count_;
      o.ptr_ = nullptr;
      o.count_ = 0;
    }
    return *this;
  }
  ~DeviceBuffer() { reset(); }

  // At least n elements (the contents are not kept when it grows). Growing first synchronises
  // `stream`, the stream whose queued work may still use the old allocation, then frees it.
  T* reserve(std::size_t n, cudaStream_t stream) {
    if (n <= count_) return ptr_;
    if (ptr_) {
      check(cudaStreamSynchronize(stream), "DeviceBuffer::reserve: synchronise before growing");
      reset();
    }
    check(cudaMalloc(reinterpret_cast<void**>(&ptr_), n * sizeof(T)), "cudaMalloc (DeviceBuffer::reserve)");
    count_ = n;
    return ptr_;
  }

  T* get() const { return ptr_; }
  std::size_t size() const { return count_; }
  std::size_t bytes() const { return count_ * sizeof(T); }

  void upload(const T* host, std::size_t count) {
    check(cudaMemcpy(ptr_, host, count * sizeof(T), cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  void download(T* host, std::size_t count) const {
    check(cudaMemcpy(host, ptr_, count * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  }

 private:
  void reset() {
    if (ptr_) cudaFree(ptr_);
    ptr_ = nullptr;
    count_ = 0;
  }
  T* ptr_ = nullptr;
  std::size_t count_ = 0;
};

// An owned CUDA stream (non-blocking by default, so that work launched on the wrong stream is not
// silently ordered by the legacy default stream).
class Stream {
 public:
  explicit Stream(unsigned flags = cudaStreamNonBlocking) {
    check(cudaStreamCreateWithFlags(&s_, flags), "cudaStreamCreateWithFlags");
  }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return s_; }
  void sync(const char* what) const { check(cudaStreamSynchronize(s_), what); }

 private:
  cudaStream_t s_ = nullptr;
};

}  // namespace tandem::cuda
