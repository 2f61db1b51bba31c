// buildmatrix: src/support/ring_buffer.h for compiling TVM's web runtime from the apache-tvm wheel (which
// lacks it). Written here: a FIFO byte buffer with the calls TVM's RPC endpoint makes.
#ifndef TVM_SUPPORT_RING_BUFFER_H_
#define TVM_SUPPORT_RING_BUFFER_H_

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

class RingBuffer {
 public:
  size_t bytes_available() const { return data_.size() - head_; }
  void Reserve(size_t n) { data_.reserve(head_ + n); }
  void Read(void* out, size_t size) {
    std::memcpy(out, data_.data() + head_, size);
    Consume(size);
  }
  void Write(const void* in, size_t size) {
    const char* p = static_cast<const char*>(in);
    data_.insert(data_.end(), p, p + size);
  }
  // hand up to max_nbytes of the front to f(const void*, size_t) -> bytes taken; drop what it took
  template <typename F>
  size_t ReadWithCallback(F f, size_t max_nbytes) {
    size_t n = std::min(max_nbytes, bytes_available());
    if (n == 0) return 0;
    size_t taken = f(data_.data() + head_, n);
    Consume(taken);
    return taken;
  }
  // let f(void*, size_t) -> bytes written fill up to max_nbytes at the back
  template <typename F>
  size_t WriteWithCallback(F f, size_t max_nbytes) {
    size_t old = data_.size();
    data_.resize(old + max_nbytes);
    size_t n = f(data_.data() + old, max_nbytes);
    data_.resize(old + n);
    return n;
  }

 private:
  void Consume(size_t n) {
    head_ += n;
    if (head_ == data_.size()) {
      data_.clear();
      head_ = 0;
    }
  }
  std::vector<char> data_;
  size_t head_ = 0;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_RING_BUFFER_H_
