// buildmatrix: include/tvm/support/cuda/nvtx.h for compiling TVM's web runtime from the apache-tvm wheel
// (which lacks it). There is no NVTX on the web: the profiling range is a no-op.
#ifndef TVM_SUPPORT_CUDA_NVTX_H_
#define TVM_SUPPORT_CUDA_NVTX_H_

#include <string>

namespace tvm {
namespace support {

class NVTXScopedRange {
 public:
  explicit NVTXScopedRange(const char*) {}
  explicit NVTXScopedRange(const std::string&) {}
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_CUDA_NVTX_H_
