// buildmatrix: src/support/bytes_io.h (see include/tvm/support/io.h): streams over an in-memory byte string.
#ifndef TVM_SUPPORT_BYTES_IO_H_
#define TVM_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit BytesInStream(const std::string& data) : data_(data.data()), size_(data.size()) {}
  explicit BytesInStream(const ffi::Bytes& data) : data_(data.data()), size_(data.size()) {}
  BytesInStream(const char* data, size_t size) : data_(data), size_(size) {}
  size_t Read(void* ptr, size_t size) override {
    size_t n = std::min(size, size_ - pos_);
    if (n) std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) override { return 0; }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit BytesOutStream(std::string* out) : out_(out) {}
  size_t Read(void*, size_t) override { return 0; }
  size_t Write(const void* ptr, size_t size) override {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BYTES_IO_H_
