// FASTCONV_CHECK(cond, parts...): TORCH_CHECK whose message is built without
// std::ostream. On the GPU image (torch 2.11 built by gcc-toolset-13, this
// library by gcc 13.3) inserting a number into an ostream from code compiled
// into an extension segfaults, even at -O0 (dev/gpu/error_path_probe.py), and
// TORCH_CHECK's c10::str formats every part through one. So a bad input got a
// crash instead of an exception. The parts are appended with std::to_string
// and string copies; TORCH_CHECK then gets one finished string.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/MemoryFormat.h>
#include <c10/core/ScalarType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

namespace fastconv {
namespace message {

inline void append(std::string& s, const char* v) { s += v; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, c10::string_view v) { s.append(v.data(), v.size()); }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T, std::enable_if_t<std::is_integral<T>::value && !std::is_same<T, bool>::value &&
                                           !std::is_same<T, char>::value,
                                       int> = 0>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename T, std::enable_if_t<std::is_floating_point<T>::value, int> = 0>
inline void append(std::string& s, T v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", double(v));
  s += buf;
}
inline void append(std::string& s, c10::ArrayRef<int64_t> v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
inline void append(std::string& s, const std::vector<int64_t>& v) { append(s, c10::ArrayRef<int64_t>(v)); }
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, caffe2::TypeMeta v) { append(s, v.toScalarType()); }
inline void append(std::string& s, c10::Device v) { s += v.str(); }  // formatted inside libc10
inline void append(std::string& s, c10::MemoryFormat v) {
  switch (v) {
    case c10::MemoryFormat::Contiguous: s += "Contiguous"; return;
    case c10::MemoryFormat::ChannelsLast: s += "ChannelsLast"; return;
    case c10::MemoryFormat::ChannelsLast3d: s += "ChannelsLast3d"; return;
    case c10::MemoryFormat::Preserve: s += "Preserve"; return;
    default: s += "MemoryFormat(" + std::to_string(int(v)) + ")"; return;
  }
}

template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

}  // namespace message
}  // namespace fastconv

#define FASTCONV_CHECK(cond, ...) TORCH_CHECK(cond, ::fastconv::message::cat(__VA_ARGS__))
#define FASTCONV_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::fastconv::message::cat(__VA_ARGS__))
