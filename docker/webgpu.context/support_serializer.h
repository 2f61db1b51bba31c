// buildmatrix: include/tvm/support/serializer.h (see io.h). Layout, little endian: arithmetic values and
// enums as their raw bytes; strings and sequences as a uint64 count then the elements; pairs as first then
// second; maps as a uint64 count then key, value; a class with Save(Stream*)/Load(Stream*) serializes itself.
#ifndef TVM_SUPPORT_SERIALIZER_H_
#define TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

template <typename T>
struct Serializer<T, std::enable_if_t<std::is_arithmetic_v<T> || std::is_enum_v<T>>> {
  static void Write(Stream* s, const T& v) { s->Write(&v, sizeof(T)); }
  static bool Read(Stream* s, T* v) { return s->Read(v, sizeof(T)) == sizeof(T); }
};

template <>
struct Serializer<DLDataType> {
  static void Write(Stream* s, const DLDataType& v) {
    s->Write(v.code);
    s->Write(v.bits);
    s->Write(v.lanes);
  }
  static bool Read(Stream* s, DLDataType* v) { return s->Read(&v->code) && s->Read(&v->bits) && s->Read(&v->lanes); }
};

template <>
struct Serializer<DLDevice> {
  static void Write(Stream* s, const DLDevice& v) {
    int32_t type = static_cast<int32_t>(v.device_type);
    s->Write(type);
    s->Write(v.device_id);
  }
  static bool Read(Stream* s, DLDevice* v) {
    int32_t type = 0;
    if (!s->Read(&type) || !s->Read(&v->device_id)) return false;
    v->device_type = static_cast<DLDeviceType>(type);
    return true;
  }
};

inline void WriteBytes(Stream* s, const char* data, size_t n) {
  s->Write(static_cast<uint64_t>(n));
  if (n) s->Write(data, n);
}

inline bool ReadBytes(Stream* s, std::string* out) {
  uint64_t n = 0;
  if (!s->Read(&n)) return false;
  out->resize(n);
  return n == 0 || s->Read(&(*out)[0], n) == n;
}

template <>
struct Serializer<std::string> {
  static void Write(Stream* s, const std::string& v) { WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, std::string* v) { return ReadBytes(s, v); }
};

template <>
struct Serializer<ffi::String> {
  static void Write(Stream* s, const ffi::String& v) { WriteBytes(s, v.data(), v.size()); }
  static bool Read(Stream* s, ffi::String* v) {
    std::string tmp;
    if (!ReadBytes(s, &tmp)) return false;
    *v = ffi::String(tmp);
    return true;
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static void Write(Stream* s, const std::pair<A, B>& v) {
    s->Write(v.first);
    s->Write(v.second);
  }
  static bool Read(Stream* s, std::pair<A, B>* v) { return s->Read(&v->first) && s->Read(&v->second); }
};

template <typename T>
struct Serializer<std::vector<T>> {
  static void Write(Stream* s, const std::vector<T>& v) {
    s->Write(static_cast<uint64_t>(v.size()));
    if constexpr (std::is_arithmetic_v<T>) {
      if (!v.empty()) s->Write(v.data(), v.size() * sizeof(T));
    } else {
      for (const T& e : v) s->Write(e);
    }
  }
  static bool Read(Stream* s, std::vector<T>* v) {
    uint64_t n = 0;
    if (!s->Read(&n)) return false;
    v->resize(n);
    if constexpr (std::is_arithmetic_v<T>) {
      return n == 0 || s->Read(v->data(), n * sizeof(T)) == n * sizeof(T);
    } else {
      for (T& e : *v) {
        if (!s->Read(&e)) return false;
      }
      return true;
    }
  }
};

template <typename M, typename K, typename V>
struct MapSerializer {
  static void Write(Stream* s, const M& m) {
    s->Write(static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      s->Write(K(kv.first));
      s->Write(V(kv.second));
    }
  }
  static bool Read(Stream* s, M* m) {
    uint64_t n = 0;
    if (!s->Read(&n)) return false;
    for (uint64_t i = 0; i < n; ++i) {
      K k;
      V v;
      if (!s->Read(&k) || !s->Read(&v)) return false;
      (*m)[k] = v;
    }
    return true;
  }
};

template <typename K, typename V>
struct Serializer<std::unordered_map<K, V>> : MapSerializer<std::unordered_map<K, V>, K, V> {};
template <typename K, typename V>
struct Serializer<std::map<K, V>> : MapSerializer<std::map<K, V>, K, V> {};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static void Write(Stream* s, const ffi::Array<T>& v) {
    s->Write(static_cast<uint64_t>(v.size()));
    for (size_t i = 0; i < v.size(); ++i) s->Write(static_cast<T>(v[i]));
  }
  static bool Read(Stream* s, ffi::Array<T>* v) {
    uint64_t n = 0;
    if (!s->Read(&n)) return false;
    ffi::Array<T> out;
    for (uint64_t i = 0; i < n; ++i) {
      T e;
      if (!s->Read(&e)) return false;
      out.push_back(e);
    }
    *v = out;
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static void Write(Stream* s, const ffi::Map<K, V>& m) {
    s->Write(static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      s->Write(static_cast<K>(kv.first));
      s->Write(static_cast<V>(kv.second));
    }
  }
  static bool Read(Stream* s, ffi::Map<K, V>* m) {
    uint64_t n = 0;
    if (!s->Read(&n)) return false;
    ffi::Map<K, V> out;
    for (uint64_t i = 0; i < n; ++i) {
      K k;
      V v;
      if (!s->Read(&k) || !s->Read(&v)) return false;
      out.Set(k, v);
    }
    *m = out;
    return true;
  }
};

// a class with its own Save(Stream*) const / Load(Stream*)
template <typename T>
struct Serializer<T, std::enable_if_t<std::is_class_v<T> &&
                                      std::is_same_v<decltype(std::declval<T&>().Load(std::declval<Stream*>())), bool>>> {
  static void Write(Stream* s, const T& v) { v.Save(s); }
  static bool Read(Stream* s, T* v) { return v->Load(s); }
};

}  // namespace support
}  // namespace tvm

#endif  // TVM_SUPPORT_SERIALIZER_H_
