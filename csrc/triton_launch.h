// Native launches of compiled Triton kernels (triton_launch.cpp).
#pragma once

#include <pybind11/pybind11.h>

namespace fastconv {
namespace triton_launch {

// Adds _C.NativeLaunch and _C.cuda_driver_error to the extension module.
void bind(pybind11::module& m);

}  // namespace triton_launch
}  // namespace fastconv
