// The one binding file: op schemas, CPU kernels bound to them, and the small
// Python module fastconv._C (debug switches, workspace queries, blocking).
#include <torch/extension.h>
#include <torch/library.h>

#include "blocking.h"
#include "cachesim.h"
#include "triton_launch.h"
#include "cpu_features.h"
#include "ops.h"

namespace fastconv {
// depthwise.cpp: the plain per-channel loop nest the tuned depthwise kernels are
// checked against (forward only; same arguments as depthwise_conv2d).
at::Tensor depthwise_naive_conv2d(const at::Tensor& input, const at::Tensor& weight,
                                  const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  c10::string_view activation);
}  // namespace fastconv

// Every algorithm family gets the same three ops. Padding is
// (top, bottom, left, right) so PyTorch's asymmetric 'same' needs no copy.
#define FASTCONV_DEFINE_ALGO(m, name)                                                        \
  m.def(#name                                                                                \
        "_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, " \
        "int[2] dilation, int groups, str activation=\"none\") -> Tensor");                  \
  m.def(#name                                                                                \
        "_conv2d_grad_input(Tensor grad_output, Tensor weight, int[4] input_size, "          \
        "int[2] stride, int[4] padding, int[2] dilation, int groups) -> Tensor");            \
  m.def(#name                                                                                \
        "_conv2d_grad_weight(Tensor grad_output, Tensor input, int[4] weight_size, "        \
        "int[2] stride, int[4] padding, int[2] dilation, int groups) -> Tensor");

namespace fastconv {
// im2col extras (csrc/im2col.cpp): the untuned loop nest of the same algorithm,
// and the column-buffer bytes the latest im2col op allocated (tests check it
// against im2col_workspace_bytes).
at::Tensor im2col_conv2d_naive(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation);
int64_t im2col_last_workspace_bytes();
// The 1x1 GEMM's packed panels (modules cache them for im2col's 1x1 layers), the
// forward on them, and its plain loop nest (tests).
at::Tensor pointwise_pack_weight(const at::Tensor& weight);
at::Tensor pointwise_conv2d_packed(const at::Tensor& input, const at::Tensor& packed_weight,
                                   at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                   at::IntArrayRef dilation, int64_t groups,
                                   c10::string_view activation);
at::Tensor pointwise_naive_conv2d(const at::Tensor& input, const at::Tensor& packed_weight,
                                  at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                  at::IntArrayRef stride, at::IntArrayRef padding,
                                  at::IntArrayRef dilation, int64_t groups,
                                  c10::string_view activation);
}  // namespace fastconv

#define FASTCONV_IMPL_ALGO(m, name)                                          \
  m.impl(#name "_conv2d", &fastconv::name##_conv2d);                         \
  m.impl(#name "_conv2d_grad_input", &fastconv::name##_conv2d_grad_input);   \
  m.impl(#name "_conv2d_grad_weight", &fastconv::name##_conv2d_grad_weight);

// direct's extra ops: pack the weight once (modules cache it), run on the
// packed weight, and the plain loop nest of the blocked algorithm (tests).
namespace fastconv {
at::Tensor direct_pack_weight(const at::Tensor& weight, int64_t groups);
int64_t direct_pack_block(at::ScalarType dtype, int64_t Kg);
double fma_peak_gflops(const std::string& isa, int64_t iters);
at::Tensor direct_conv2d_packed(const at::Tensor& input, const at::Tensor& packed_weight,
                                at::IntArrayRef weight_size, const c10::optional<at::Tensor>& bias,
                                at::IntArrayRef stride, at::IntArrayRef padding,
                                at::IntArrayRef dilation, int64_t groups,
                                c10::string_view activation);
bool direct_blocked_weight_applies(at::ScalarType dtype, int64_t K, int64_t Cg, int64_t groups);
at::Tensor direct_pack_blocked_weight(const at::Tensor& weight, int64_t groups);
at::Tensor direct_conv2d_blocked_packed(const at::Tensor& input, const at::Tensor& packed_weight,
                                        at::IntArrayRef weight_size,
                                        const c10::optional<at::Tensor>& bias,
                                        at::IntArrayRef stride, at::IntArrayRef padding,
                                        at::IntArrayRef dilation, int64_t groups,
                                        c10::string_view activation);
at::Tensor direct_naive_conv2d(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                               c10::string_view activation);
}  // namespace fastconv

TORCH_LIBRARY(fastconv, m) {
  FASTCONV_DEFINE_ALGO(m, reference)
  FASTCONV_DEFINE_ALGO(m, im2col)
  FASTCONV_DEFINE_ALGO(m, direct)
  m.def("direct_pack_weight(Tensor weight, int groups) -> Tensor");
  m.def("direct_conv2d_packed(Tensor input, Tensor packed_weight, int[4] weight_size, "
        "Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, int groups, "
        "str activation=\"none\") -> Tensor");
  m.def("direct_pack_blocked_weight(Tensor weight, int groups) -> Tensor");
  m.def("direct_conv2d_blocked_packed(Tensor input, Tensor packed_weight, int[4] weight_size, "
        "Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, int groups, "
        "str activation=\"none\") -> Tensor");
  m.def("direct_naive_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups, str activation=\"none\") -> Tensor");
  FASTCONV_DEFINE_ALGO(m, depthwise)
  m.def("depthwise_naive_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups, str activation=\"none\") -> Tensor");
  m.def("pointwise_pack_weight(Tensor weight) -> Tensor");
  m.def("pointwise_conv2d_packed(Tensor input, Tensor packed_weight, int[4] weight_size, "
        "Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, int groups, "
        "str activation=\"none\") -> Tensor");
  m.def("pointwise_naive_conv2d(Tensor input, Tensor packed_weight, int[4] weight_size, "
        "Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, int groups, "
        "str activation=\"none\") -> Tensor");
  m.def("im2col_naive_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, "
        "int[4] padding, int[2] dilation, int groups, str activation=\"none\") -> Tensor");
}

TORCH_LIBRARY_IMPL(fastconv, CPU, m) {
  FASTCONV_IMPL_ALGO(m, reference)
  FASTCONV_IMPL_ALGO(m, im2col)
  FASTCONV_IMPL_ALGO(m, direct)
  m.impl("direct_pack_weight", &fastconv::direct_pack_weight);
  m.impl("direct_conv2d_packed", &fastconv::direct_conv2d_packed);
  m.impl("direct_naive_conv2d", &fastconv::direct_naive_conv2d);
  m.impl("direct_pack_blocked_weight", &fastconv::direct_pack_blocked_weight);
  m.impl("direct_conv2d_blocked_packed", &fastconv::direct_conv2d_blocked_packed);
  FASTCONV_IMPL_ALGO(m, depthwise)
  m.impl("depthwise_naive_conv2d", &fastconv::depthwise_naive_conv2d);
  m.impl("im2col_naive_conv2d", &fastconv::im2col_conv2d_naive);
  m.impl("pointwise_pack_weight", &fastconv::pointwise_pack_weight);
  m.impl("pointwise_conv2d_packed", &fastconv::pointwise_conv2d_packed);
  m.impl("pointwise_naive_conv2d", &fastconv::pointwise_naive_conv2d);
}

namespace {

int64_t im2col_workspace_bytes_py(std::vector<int64_t> input_size, std::vector<int64_t> weight_size,
                                  std::vector<int64_t> stride, std::vector<int64_t> padding,
                                  std::vector<int64_t> dilation, int64_t groups,
                                  int64_t element_size) {
  const auto p = fastconv::make_params("fastconv.im2col_workspace_bytes", input_size, weight_size,
                                       stride, padding, dilation, groups);
  return fastconv::im2col_workspace_bytes(p, element_size);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastconv C++ extension: CPU convolution kernels registered as torch.ops.fastconv.*";
  m.def("set_debug_poison", &fastconv::set_debug_poison,
        "Fill every new output with NaN before kernels write it (tests use this).");
  m.def("debug_poison", &fastconv::debug_poison);
  m.def("cpu_has_avx2_fma", &fastconv::cpu_has_avx2_fma,
        "Whether this CPU supports the AVX2+FMA code paths.");
  m.def("set_force_portable", &fastconv::set_force_portable,
        "Force the portable (no SIMD intrinsics) paths (True), or lift the cap (False).");
  m.def("cpu_isa", [] { return std::string(fastconv::isa_name(fastconv::cpu_isa())); },
        "The instruction set the CPU kernels use now: avx512, avx2 or portable.");
  m.def("cpu_isa_supported",
        [] { return std::string(fastconv::isa_name(fastconv::cpu_isa_supported())); },
        "The best instruction set this CPU supports (before FASTCONV_CPU_ISA / set_max_isa).");
  m.def("set_max_isa", [](const std::string& name) {
        fastconv::set_max_isa(fastconv::parse_isa(name.c_str())); },
        "Cap the instruction set the CPU kernels use (portable, avx2, avx512); tests force "
        "each path with it. The environment variable FASTCONV_CPU_ISA sets the cap at load.");
  m.def("direct_pack_block", [](pybind11::object dtype, int64_t Kg) {
        return fastconv::direct_pack_block(torch::python::detail::py_object_to_dtype(dtype), Kg); },
        "Output channels per packed weight vector of direct_pack_weight for (dtype, K/groups) "
        "on the instruction set in use: 16 (AVX-512, float32, K/groups > 8) or 8.");
  m.def("direct_blocked_weight_applies", [](pybind11::object dtype, int64_t K, int64_t Cg,
                                            int64_t groups) {
        return fastconv::direct_blocked_weight_applies(
            torch::python::detail::py_object_to_dtype(dtype), K, Cg, groups); },
        "Whether direct_pack_blocked_weight applies to a weight (dtype, K, C/groups, groups) on "
        "the instruction set in use: float32, AVX-512, the blocked tiles' channel counts.");
  m.def("fma_peak_gflops", &fastconv::fma_peak_gflops, pybind11::arg("isa"),
        pybind11::arg("iters") = 20000000,
        "Single-thread float32 FMA throughput (GFLOP/s) of a register-only loop on 'avx2' or "
        "'avx512' (benchmarks/fma_peak.py).");
  m.def("im2col_workspace_bytes", &im2col_workspace_bytes_py,
        "Column-buffer bytes im2col allocates for (input_size, weight_size, stride, "
        "padding[4], dilation, groups, element_size).");
  m.def("im2col_last_workspace_bytes", &fastconv::im2col_last_workspace_bytes,
        "Column-buffer bytes allocated by the latest im2col op (for tests).");
  m.def("blocking", [] {
    pybind11::dict d;
#define FASTCONV_EXPORT_CONSTANT(name, constant) d[#name] = fastconv::blocking::constant;
    FASTCONV_BLOCKING_CONSTANTS(FASTCONV_EXPORT_CONSTANT)
#undef FASTCONV_EXPORT_CONSTANT
    return d;
  }, "The kernels' blocking parameters (read by fastconv explain).");
  fastconv::cachesim::bind(m);
  fastconv::triton_launch::bind(m);
}
