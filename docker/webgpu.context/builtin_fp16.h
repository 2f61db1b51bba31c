// buildmatrix: 3rdparty/compiler-rt/builtin_fp16.h for compiling TVM's web runtime from the apache-tvm wheel
// (which lacks it). Written here: IEEE binary widening (e.g. half -> float), the one conversion the web
// runtime's sources use (contrib/sort on float16 keys).
#ifndef BUILDMATRIX_BUILTIN_FP16_H_
#define BUILDMATRIX_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T, int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  constexpr int src_bits = sizeof(SRC_REP_T) * 8, dst_bits = sizeof(DST_REP_T) * 8;
  constexpr int src_exp_bits = src_bits - SRC_SIG_BITS - 1, dst_exp_bits = dst_bits - DST_SIG_BITS - 1;
  constexpr int src_bias = (1 << (src_exp_bits - 1)) - 1, dst_bias = (1 << (dst_exp_bits - 1)) - 1;
  SRC_REP_T s;
  std::memcpy(&s, &a, sizeof(s));
  DST_REP_T sign = static_cast<DST_REP_T>((s >> (src_bits - 1)) & 1) << (dst_bits - 1);
  DST_REP_T exp = (s >> SRC_SIG_BITS) & ((1 << src_exp_bits) - 1);
  DST_REP_T sig = s & ((static_cast<SRC_REP_T>(1) << SRC_SIG_BITS) - 1);
  DST_REP_T out;
  if (exp == static_cast<DST_REP_T>((1 << src_exp_bits) - 1)) {  // inf / nan
    out = sign | (static_cast<DST_REP_T>((1 << dst_exp_bits) - 1) << DST_SIG_BITS) | (sig << (DST_SIG_BITS - SRC_SIG_BITS));
  } else if (exp == 0 && sig == 0) {  // zero
    out = sign;
  } else if (exp == 0) {  // subnormal: normalize
    int e = 1 - src_bias;
    while (!(sig & (static_cast<DST_REP_T>(1) << SRC_SIG_BITS))) {
      sig <<= 1;
      --e;
    }
    sig &= (static_cast<DST_REP_T>(1) << SRC_SIG_BITS) - 1;
    out = sign | (static_cast<DST_REP_T>(e + dst_bias) << DST_SIG_BITS) | (sig << (DST_SIG_BITS - SRC_SIG_BITS));
  } else {
    out = sign | (static_cast<DST_REP_T>(exp - src_bias + dst_bias) << DST_SIG_BITS) |
          (sig << (DST_SIG_BITS - SRC_SIG_BITS));
  }
  DST_T r;
  std::memcpy(&r, &out, sizeof(r));
  return r;
}

#endif  // BUILDMATRIX_BUILTIN_FP16_H_
