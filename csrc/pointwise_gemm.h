// 1x1 convolutions as our own packed AVX-512 GEMM (csrc/pointwise_gemm_avx512.cpp) on
// weight panels packed once: pointwise_conv2d_packed (modules) runs it where it applies.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "conv_params.h"

namespace fastconv {

// float32, AVX-512 in use, groups 1, 1x1 kernel, no padding (any stride), non-empty.
bool pointwise_gemm_applies(const ConvParams& p, at::ScalarType dtype);
// Weight [K][C][1][1] (any strides) -> panels [ceil(K/32)][C][32], zero-padded.
std::vector<int64_t> pointwise_panels_shape(int64_t K, int64_t C);
at::Tensor pointwise_pack_panels(const at::Tensor& weight);
// Inverse of pointwise_pack_panels (a view chain plus one copy).
at::Tensor pointwise_unpack_panels(const at::Tensor& panels, int64_t K);
// The conv on packed panels, output in `fmt` (channels_last or contiguous).
at::Tensor pointwise_gemm_forward(const at::Tensor& input, const at::Tensor& panels,
                                  const c10::optional<at::Tensor>& bias, const ConvParams& p,
                                  Activation act, at::MemoryFormat fmt);
// Without cached panels (functional calls): each task packs the panel it
// runs (16x16 transposes in registers) from the weight itself. Applies where
// that beat MKL's sgemm: up to kGemmAvx512UnpackedMaxPixels output pixels,
// channels_last, or NCHW strided layers on the small planes that run the
// channels_last tile (blocking.h).
bool pointwise_gemm_unpacked_applies(const ConvParams& p, at::ScalarType dtype,
                                     at::MemoryFormat fmt);
at::Tensor pointwise_gemm_forward_unpacked(const at::Tensor& input, const at::Tensor& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const ConvParams& p, Activation act,
                                           at::MemoryFormat fmt);
// The plain loop nest over the same panels (any ISA, float32/float64), for tests.
at::Tensor pointwise_gemm_naive(const at::Tensor& input, const at::Tensor& panels,
                                const c10::optional<at::Tensor>& bias, const ConvParams& p,
                                Activation act, at::MemoryFormat fmt);

}  // namespace fastconv
