// buildmatrix: src/support/base64.h (see include/tvm/support/io.h): standard base64 (RFC 4648, '=' padding)
// over another stream; used for tensors in JSON.
#ifndef TVM_SUPPORT_BASE64_H_
#define TVM_SUPPORT_BASE64_H_

#include <tvm/support/io.h>

#include <algorithm>
#include <string>

namespace tvm {
namespace support {

inline const char* Base64Alphabet() { return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"; }

class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64OutStream(Stream* out) : out_(out) {}
  size_t Read(void*, size_t) override { return 0; }
  size_t Write(const void* ptr, size_t size) override {
    const unsigned char* p = static_cast<const unsigned char*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      buf_[n_++] = p[i];
      if (n_ == 3) Flush();
    }
    return size;
  }
  void Finish() {
    if (n_) Flush();
  }

 private:
  void Flush() {
    const char* a = Base64Alphabet();
    unsigned v = (buf_[0] << 16) | ((n_ > 1 ? buf_[1] : 0) << 8) | (n_ > 2 ? buf_[2] : 0);
    char o[4] = {a[(v >> 18) & 63], a[(v >> 12) & 63], n_ > 1 ? a[(v >> 6) & 63] : '=', n_ > 2 ? a[v & 63] : '='};
    out_->Write(o, 4);
    n_ = 0;
  }
  Stream* out_;
  unsigned char buf_[3] = {0, 0, 0};
  int n_ = 0;
};

class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;
  explicit Base64InStream(Stream* in) : in_(in) {}
  void InitPosition() {
    std::string all;
    char c;
    while (in_->Read(&c, 1) == 1) {
      if (c != '\n' && c != '\r' && c != ' ') all.push_back(c);
    }
    for (size_t i = 0; i + 3 < all.size(); i += 4) {
      unsigned v = 0;
      int pad = 0;
      for (int j = 0; j < 4; ++j) {
        char ch = all[i + j];
        v <<= 6;
        if (ch == '=') {
          ++pad;
        } else {
          const char* a = Base64Alphabet();
          for (int k = 0; k < 64; ++k) {
            if (a[k] == ch) v |= k;
          }
        }
      }
      data_.push_back(static_cast<char>((v >> 16) & 255));
      if (pad < 2) data_.push_back(static_cast<char>((v >> 8) & 255));
      if (pad < 1) data_.push_back(static_cast<char>(v & 255));
    }
  }
  size_t Read(void* ptr, size_t size) override {
    size_t n = std::min(size, data_.size() - pos_);
    for (size_t i = 0; i < n; ++i) static_cast<char*>(ptr)[i] = data_[pos_ + i];
    pos_ += n;
    return n;
  }
  size_t Write(const void*, size_t) override { return 0; }

 private:
  Stream* in_;
  std::string data_;
  size_t pos_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_BASE64_H_
