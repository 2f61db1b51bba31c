// buildmatrix: src/support/arena.h for compiling TVM's web runtime from the apache-tvm wheel (which lacks
// it). Written here: scratch allocations released together (RecycleAll).
#ifndef TVM_SUPPORT_ARENA_H_
#define TVM_SUPPORT_ARENA_H_

#include <cstddef>
#include <memory>
#include <vector>

namespace tvm {
namespace support {

class Arena {
 public:
  template <typename T>
  T* allocate_(size_t count) {
    blocks_.emplace_back(new std::max_align_t[(count * sizeof(T) + sizeof(std::max_align_t) - 1) /
                                                  sizeof(std::max_align_t) + 1]);
    return reinterpret_cast<T*>(blocks_.back().get());
  }
  void RecycleAll() { blocks_.clear(); }

 private:
  std::vector<std::unique_ptr<std::max_align_t[]>> blocks_;
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_ARENA_H_
