// Launching compiled Triton kernels from C++ (kernels/_common.Launch's native path).
//
// Why: a Triton launch from Python costs ~10 us of host time (the compiled kernel's
// runner, launch metadata, scratch allocation, argument extraction), as much as cuDNN's
// whole F.conv2d call. A plan's launch fixes every argument but its tensors, so the
// kernel parameters can be laid out once here and each call only fills in pointers and
// calls cuLaunchKernel on PyTorch's current stream.
//
// The extension is built without the CUDA toolkit and must load where there is no GPU:
// the driver API (libcuda.so.1) is opened on first use, and the few types it needs are
// declared here. The current stream comes from c10's device guard (the CUDA one is
// registered by torch's CUDA library whenever CUDA tensors exist).
#include "triton_launch.h"

#include <ATen/ATen.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <dlfcn.h>
#include <pybind11/stl.h>
#include <torch/python.h>

#include <torch/autograd.h>
#include <torch/custom_class.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "check.h"

namespace fastconv {
namespace triton_launch {
namespace {

// Driver API subset (cuda.h's declarations, whose ABI is stable).
using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
using CUfunction = void*;
using CUstream = void*;
using LaunchKernelFn = CUresult (*)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                    unsigned, unsigned, CUstream, void**, void**);
using GetErrorStringFn = CUresult (*)(CUresult, const char**);
using CtxGetCurrentFn = CUresult (*)(CUcontext*);
using CtxSetCurrentFn = CUresult (*)(CUcontext);
using DeviceGetFn = CUresult (*)(CUdevice*, int);
using PrimaryCtxRetainFn = CUresult (*)(CUcontext*, CUdevice);

struct Driver {
  LaunchKernelFn launch_kernel = nullptr;
  GetErrorStringFn get_error_string = nullptr;
  CtxGetCurrentFn ctx_get_current = nullptr;
  CtxSetCurrentFn ctx_set_current = nullptr;
  DeviceGetFn device_get = nullptr;
  PrimaryCtxRetainFn primary_ctx_retain = nullptr;
  std::string error;  // why it could not be loaded (empty when loaded)
};

template <class Fn>
void load_symbol(void* lib, const char* name, Fn* fn, std::string* error) {
  *fn = reinterpret_cast<Fn>(dlsym(lib, name));
  if (*fn == nullptr && error->empty()) {
    *error = std::string("libcuda.so.1 has no symbol ") + name;
  }
}

const Driver& driver() {
  static const Driver d = [] {
    Driver d;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
      const char* why = dlerror();
      d.error = std::string("cannot open the CUDA driver libcuda.so.1: ") + (why ? why : "");
      return d;
    }
    load_symbol(lib, "cuLaunchKernel", &d.launch_kernel, &d.error);
    load_symbol(lib, "cuGetErrorString", &d.get_error_string, &d.error);
    load_symbol(lib, "cuCtxGetCurrent", &d.ctx_get_current, &d.error);
    load_symbol(lib, "cuCtxSetCurrent", &d.ctx_set_current, &d.error);
    load_symbol(lib, "cuDeviceGet", &d.device_get, &d.error);
    load_symbol(lib, "cuDevicePrimaryCtxRetain", &d.primary_ctx_retain, &d.error);
    return d;
  }();
  return d;
}

std::string error_text(const Driver& d, CUresult r) {
  const char* s = nullptr;
  if (d.get_error_string != nullptr && d.get_error_string(r, &s) == 0 && s != nullptr) {
    return std::string(s) + " (CUresult " + std::to_string(r) + ")";
  }
  return "CUresult " + std::to_string(r);
}

// A thread that has only run the runtime API on other devices, or none (an autograd
// worker), may have no current context; Triton's modules live in the primary context.
void ensure_context(const Driver& d, int device) {
  thread_local int ready_device = -1;
  if (ready_device == device) return;
  CUcontext ctx = nullptr;
  CUresult r = d.ctx_get_current(&ctx);
  FASTCONV_CHECK(r == 0, "fastconv: cuCtxGetCurrent failed: ", error_text(d, r));
  if (ctx == nullptr) {
    CUdevice dev = 0;
    r = d.device_get(&dev, device);
    FASTCONV_CHECK(r == 0, "fastconv: cuDeviceGet(", device, ") failed: ", error_text(d, r));
    r = d.primary_ctx_retain(&ctx, dev);
    FASTCONV_CHECK(r == 0, "fastconv: cuDevicePrimaryCtxRetain failed: ", error_text(d, r));
    r = d.ctx_set_current(ctx);
    FASTCONV_CHECK(r == 0, "fastconv: cuCtxSetCurrent failed: ", error_text(d, r));
  }
  ready_device = device;
}

// One kernel parameter: a tensor's data pointer (index into the call's tensors) or a
// fixed scalar of 4 or 8 bytes (Triton's signature types; pointers to scratch are 0).
struct Param {
  int tensor = -1;  // >= 0: the call's tensor number
  int bytes = 8;
  uint64_t value = 0;
};

Param scalar_param(const std::string& type, pybind11::handle value) {
  Param p;
  if (type == "nullptr") {
    return p;  // a scratch pointer Triton passes as 0 when the kernel needs none
  }
  if (type == "fp32" || type == "f32") {
    float f = value.cast<float>();
    p.bytes = 4;
    std::memcpy(&p.value, &f, 4);
  } else if (type == "fp64" || type == "f64") {
    double f = value.cast<double>();
    std::memcpy(&p.value, &f, 8);
  } else if (type == "i1" || type == "i8" || type == "i16" || type == "i32" || type == "u1" ||
             type == "u8" || type == "u16" || type == "u32") {
    // Triton passes every integer narrower than 64 bits as a 32-bit parameter.
    int64_t v = value.cast<int64_t>();
    FASTCONV_CHECK(v >= INT32_MIN && v <= static_cast<int64_t>(UINT32_MAX),
                "fastconv: scalar ", v, " does not fit the kernel's ", type, " parameter");
    uint32_t u = static_cast<uint32_t>(v);
    p.bytes = 4;
    std::memcpy(&p.value, &u, 4);
  } else if (type == "i64" || type == "u64") {
    int64_t v = value.cast<int64_t>();
    std::memcpy(&p.value, &v, 8);
  } else {
    FASTCONV_CHECK(false, "fastconv: no native launch for Triton parameter type ", type);
  }
  return p;
}

// A compiled kernel of one call signature: which device it was loaded on and, per
// tensor, the dtype and whether its pointer is 16-byte aligned (what Triton specializes
// a pointer argument on).
struct Variant {
  int device;
  uint64_t aligned_mask;
  std::vector<at::ScalarType> dtypes;
  CUfunction function;
  unsigned threads;  // 32 x num_warps
  unsigned shared;   // dynamic shared memory bytes
};

class NativeLaunch {
 public:
  NativeLaunch(std::vector<int64_t> grid, int64_t n_tensors, pybind11::list params)
      : n_tensors_(n_tensors) {
    FASTCONV_CHECK(grid.size() == 3, "fastconv: a native launch needs a 3-D grid");
    FASTCONV_CHECK(n_tensors >= 1 && n_tensors <= 64, "fastconv: bad tensor count ", n_tensors);
    for (int i = 0; i < 3; ++i) {
      FASTCONV_CHECK(grid[i] >= 0 && grid[i] <= INT32_MAX, "fastconv: grid ", grid, " out of range");
      grid_[i] = static_cast<unsigned>(grid[i]);
    }
    for (auto item : params) {
      auto spec = item.cast<pybind11::tuple>();  // ("tensor", i) or (type, value)
      auto kind = spec[0].cast<std::string>();
      if (kind == "tensor") {
        Param p;
        p.tensor = spec[1].cast<int>();
        FASTCONV_CHECK(p.tensor >= 0 && p.tensor < n_tensors, "fastconv: tensor parameter ",
                    p.tensor, " of ", n_tensors);
        params_.push_back(p);
      } else {
        params_.push_back(scalar_param(kind, spec[1]));
      }
    }
  }

  void add_variant(int64_t device, std::vector<bool> aligned, std::vector<pybind11::object> dtypes,
                   uint64_t function, int64_t threads, int64_t shared_bytes) {
    FASTCONV_CHECK(static_cast<int64_t>(aligned.size()) == n_tensors_ &&
                    static_cast<int64_t>(dtypes.size()) == n_tensors_,
                "fastconv: a variant names every tensor's alignment and dtype");
    FASTCONV_CHECK(threads > 0 && threads <= 1024, "fastconv: bad block size ", threads);
    FASTCONV_CHECK(shared_bytes >= 0 && shared_bytes <= INT32_MAX, "fastconv: bad shared memory size ",
                shared_bytes);
    Variant v{static_cast<int>(device), 0, {}, reinterpret_cast<CUfunction>(function),
              static_cast<unsigned>(threads), static_cast<unsigned>(shared_bytes)};
    for (int64_t i = 0; i < n_tensors_; ++i) {
      if (aligned[i]) v.aligned_mask |= uint64_t{1} << i;
      v.dtypes.push_back(torch::python::detail::py_object_to_dtype(dtypes[i]));
    }
    variants_.push_back(std::move(v));
  }

  // Launches and returns true when some variant matches the tensors and the current
  // device; false (nothing launched) otherwise, for the caller's slower path.
  bool launch(const std::vector<at::Tensor>& tensors) const {
    if (static_cast<int64_t>(tensors.size()) != n_tensors_ || variants_.empty()) return false;
    uint64_t mask = 0;
    for (int64_t i = 0; i < n_tensors_; ++i) {
      const at::Tensor& t = tensors[i];
      if (!t.defined() || !t.is_cuda()) return false;
      if (reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0) mask |= uint64_t{1} << i;
    }
    const auto* guard = c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA);
    const c10::Device device = guard->getDevice();
    const Variant* hit = nullptr;
    for (const auto& v : variants_) {
      if (v.device != device.index() || v.aligned_mask != mask) continue;
      bool same = true;
      for (int64_t i = 0; i < n_tensors_ && same; ++i) same = tensors[i].scalar_type() == v.dtypes[i];
      if (same) {
        hit = &v;
        break;
      }
    }
    if (hit == nullptr) return false;
    const Driver& d = driver();
    FASTCONV_CHECK(d.error.empty(), "fastconv: ", d.error);
    ensure_context(d, device.index());
    void* stream = guard->getStreamNativeHandle(guard->getStream(device));

    // Parameter storage: pointers and scalars in 8-byte slots; params[i] points at each.
    std::vector<uint64_t> storage(params_.size());
    std::vector<void*> args(params_.size());
    for (size_t i = 0; i < params_.size(); ++i) {
      const Param& p = params_[i];
      storage[i] = p.tensor >= 0
                       ? static_cast<uint64_t>(reinterpret_cast<uintptr_t>(tensors[p.tensor].data_ptr()))
                       : p.value;
      args[i] = &storage[i];
    }
    if (grid_[0] == 0 || grid_[1] == 0 || grid_[2] == 0) return true;  // Triton skips these too
    CUresult r = d.launch_kernel(hit->function, grid_[0], grid_[1], grid_[2], hit->threads, 1, 1,
                                 hit->shared, stream, args.data(), nullptr);
    FASTCONV_CHECK(r == 0, "fastconv: cuLaunchKernel failed: ", error_text(d, r));
    return true;
  }

  int64_t variants() const { return static_cast<int64_t>(variants_.size()); }

 private:
  unsigned grid_[3];
  int64_t n_tensors_;
  std::vector<Param> params_;
  std::vector<Variant> variants_;
};

// A plan's whole call in C++ (kernels/_plan.Plan's native form): allocate its buffers,
// run its launches over slots [a, b, bias-or-b, buffers...], return one slot. Returns
// None, having launched nothing that matters, where a launch has no variant for these
// tensors or the bias is not contiguous: the Python plan then runs.
class NativePlan {
 public:
  NativePlan(pybind11::list buffers, pybind11::list steps, int64_t result,
             std::vector<int64_t> result_order)
      : result_(result), result_order_(std::move(result_order)) {
    result_inverse_.assign(result_order_.size(), -1);
    for (size_t i = 0; i < result_order_.size(); ++i) {
      const int64_t d = result_order_[i];
      const bool fresh = d >= 0 && d < static_cast<int64_t>(result_order_.size()) &&
                         result_inverse_[d] < 0;
      FASTCONV_CHECK(fresh, "fastconv: result order ", result_order_, " is not a permutation");
      result_inverse_[d] = static_cast<int64_t>(i);
    }
    for (auto item : buffers) {  // (sizes, channels_last, dtype slot or dtype)
      auto spec = item.cast<pybind11::tuple>();
      Buffer b;
      if (pybind11::isinstance<pybind11::str>(spec[0])) {  // ("copy", slot, dim order)
        FASTCONV_CHECK(spec[0].cast<std::string>() == "copy" && spec.size() == 3,
                    "fastconv: a derived buffer is (\"copy\", slot, order)");
        b.copy_slot = spec[1].cast<int>();
        b.order = spec[2].cast<std::vector<int64_t>>();
        FASTCONV_CHECK(b.copy_slot >= 0 && b.copy_slot < 3 + static_cast<int>(buffers_.size()),
                    "fastconv: copy of slot ", b.copy_slot, " before it exists");
        b.inverse.assign(b.order.size(), -1);
        for (size_t i = 0; i < b.order.size(); ++i) {
          const int64_t d = b.order[i];
          FASTCONV_CHECK(d >= 0 && d < static_cast<int64_t>(b.order.size()) && b.inverse[d] < 0,
                      "fastconv: copy order ", b.order, " is not a permutation");
          b.inverse[d] = static_cast<int64_t>(i);
        }
        buffers_.push_back(std::move(b));
        continue;
      }
      b.sizes = spec[0].cast<std::vector<int64_t>>();
      b.channels_last = spec[1].cast<bool>();
      if (pybind11::isinstance<pybind11::int_>(spec[2])) {
        b.dtype_slot = spec[2].cast<int>();
        FASTCONV_CHECK(b.dtype_slot >= 0 && b.dtype_slot < 3 + static_cast<int>(buffers_.size()),
                    "fastconv: dtype of slot ", b.dtype_slot, " before it exists");
      } else {
        b.dtype = torch::python::detail::py_object_to_dtype(spec[2]);
      }
      FASTCONV_CHECK(!b.channels_last || b.sizes.size() == 4, "fastconv: channels_last needs 4-D");
      buffers_.push_back(std::move(b));
    }
    const int n_slots = 3 + static_cast<int>(buffers_.size());
    for (auto item : steps) {  // (NativeLaunch, slots)
      auto spec = item.cast<pybind11::tuple>();
      Step st{spec[0].cast<std::shared_ptr<NativeLaunch>>(), spec[1].cast<std::vector<int>>()};
      for (int slot : st.slots) {
        FASTCONV_CHECK(slot >= 0 && slot < n_slots, "fastconv: slot ", slot, " of ", n_slots);
      }
      steps_.push_back(std::move(st));
    }
    FASTCONV_CHECK(result >= 0 && result < n_slots && !steps_.empty(), "fastconv: bad native plan");
  }

  // The output, or nothing (nothing that matters launched) where the Python plan must run.
  // Needs no Python: the autograd engine's threads call it too.
  c10::optional<at::Tensor> run(const at::Tensor& a, const at::Tensor& b,
                                const c10::optional<at::Tensor>& c) const {
    if (c.has_value() && c->defined() && !c->is_contiguous()) return c10::nullopt;
    std::vector<at::Tensor> slots;
    slots.reserve(3 + buffers_.size());
    slots.push_back(a);
    slots.push_back(b);
    slots.push_back(c.has_value() && c->defined() ? *c : b);
    for (const auto& buf : buffers_) {
      if (buf.copy_slot >= 0) {  // the slot's values with dims in `order` outermost first
        const at::Tensor& src = slots[buf.copy_slot];
        if (src.dim() != static_cast<int64_t>(buf.order.size())) return c10::nullopt;
        slots.push_back(src.permute(buf.order).contiguous().permute(buf.inverse));
        continue;
      }
      auto dtype = buf.dtype_slot >= 0 ? slots[buf.dtype_slot].scalar_type() : buf.dtype;
      auto fmt = buf.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
      slots.push_back(at::empty(buf.sizes, a.options().dtype(dtype), fmt));
    }
    std::vector<at::Tensor> args;
    for (const auto& st : steps_) {
      args.clear();
      for (int slot : st.slots) args.push_back(slots[slot]);
      if (!st.launch->launch(args)) return c10::nullopt;
    }
    if (result_order_.empty()) return slots[result_];
    return slots[result_].permute(result_order_).contiguous().permute(result_inverse_);
  }

 private:
  struct Buffer {
    std::vector<int64_t> sizes;
    bool channels_last = false;
    int dtype_slot = -1;
    at::ScalarType dtype = at::kFloat;
    int copy_slot = -1;  // >= 0: a copy of that slot, dims laid out in `order`
    std::vector<int64_t> order, inverse;
  };
  struct Step {
    std::shared_ptr<const NativeLaunch> launch;  // shared: no Python object to free off the GIL
    std::vector<int> slots;
  };
  std::vector<Buffer> buffers_;
  std::vector<Step> steps_;
  int64_t result_;
  std::vector<int64_t> result_order_, result_inverse_;  // empty: the result slot as it is
};


// A Python callable that a Node may outlive the GIL with: freed under the GIL, or leaked
// once the interpreter is gone.
struct PythonCallable {
  pybind11::object fn;
  explicit PythonCallable(pybind11::object f) : fn(std::move(f)) {}
  ~PythonCallable() {
    if (Py_IsInitialized()) {
      pybind11::gil_scoped_acquire gil;
      fn = pybind11::object();
    } else {
      fn.release();
    }
  }
};

// One conv geometry's training call with no Python on its hot path (kernels/_plan.Family's
// conv2d_train): the forward's native plan, and once the Python backward has made them
// native, the grad_input and grad_weight plans for a grad_output of the recorded sizes,
// strides and dtype. Whatever those do not cover (a plan that declines, another
// grad_output layout, create_graph) runs the family's Python kernels:
// forward(x, w, bias) and backward(dy, x, w, need_input, need_weight) -> (grad_input,
// grad_weight); the backward installs the grad plans once they exist.
class NativeConv : public torch::CustomClassHolder {
 public:
  NativeConv(std::shared_ptr<NativePlan> forward, pybind11::object python_forward,
             pybind11::object python_backward)
      : forward_(std::move(forward)),
        python_forward_(std::make_unique<PythonCallable>(std::move(python_forward))),
        python_backward_(std::make_unique<PythonCallable>(std::move(python_backward))) {}

  void set_grad_plans(std::shared_ptr<NativePlan> grad_input,
                      std::shared_ptr<NativePlan> grad_weight, const at::Tensor& grad_output) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (grad_input) grad_input_ = std::move(grad_input);
    if (grad_weight) grad_weight_ = std::move(grad_weight);
    dy_sizes_ = grad_output.sizes().vec();
    dy_strides_ = grad_output.strides().vec();
    dy_dtype_ = grad_output.scalar_type();
  }

  bool has_grad_plans() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return grad_input_ != nullptr && grad_weight_ != nullptr;
  }

  // Called with the GIL held (from Python).
  at::Tensor forward(const at::Tensor& x, const at::Tensor& w,
                     const c10::optional<at::Tensor>& bias) const {
    auto out = forward_->run(x, w, bias);
    if (out.has_value()) return *out;
    return python_forward_->fn(x, w, bias).cast<at::Tensor>();
  }

  // Called from the autograd engine's threads, without the GIL.
  std::pair<at::Tensor, at::Tensor> backward(const at::Tensor& dy, const at::Tensor& x,
                                             const at::Tensor& w, bool need_in,
                                             bool need_w) const {
    at::Tensor g_in, g_w;
    if (!at::GradMode::is_enabled()) {  // create_graph needs the differentiable ops
      std::shared_ptr<NativePlan> gin, gw;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (dy.scalar_type() == dy_dtype_ && dy.sizes() == at::IntArrayRef(dy_sizes_) &&
            dy.strides() == at::IntArrayRef(dy_strides_)) {
          gin = grad_input_;
          gw = grad_weight_;
        }
      }
      if (need_in && gin) g_in = gin->run(dy, w, c10::nullopt).value_or(at::Tensor());
      if (need_w && gw) g_w = gw->run(dy, x, c10::nullopt).value_or(at::Tensor());
    }
    const bool left_in = need_in && !g_in.defined();
    const bool left_w = need_w && !g_w.defined();
    if (left_in || left_w) {
      pybind11::gil_scoped_acquire gil;
      auto res = python_backward_->fn(dy, x, w, left_in, left_w).cast<pybind11::tuple>();
      if (left_in) g_in = res[0].cast<at::Tensor>();
      if (left_w) g_w = res[1].cast<at::Tensor>();
    }
    return {g_in, g_w};
  }

 private:
  std::shared_ptr<NativePlan> forward_;
  std::unique_ptr<PythonCallable> python_forward_, python_backward_;
  mutable std::mutex mutex_;
  std::shared_ptr<NativePlan> grad_input_, grad_weight_;
  std::vector<int64_t> dy_sizes_, dy_strides_;
  at::ScalarType dy_dtype_ = at::kFloat;
};

// The C++ autograd of a NativeConv call (no bias gradient kernel: dy's sum, as the ops').
struct NativeConvFunction : public torch::autograd::Function<NativeConvFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& w, const c10::optional<at::Tensor>& bias,
                            const c10::intrusive_ptr<NativeConv>& conv) {
    at::Tensor out = conv->forward(x, w, bias);
    ctx->saved_data["conv"] = c10::IValue::make_capsule(conv);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->save_for_backward({x, w});
    return out;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    torch::autograd::variable_list out(4);
    const at::Tensor& dy = grads[0];
    if (!dy.defined()) return out;
    const auto saved = ctx->get_saved_variables();
    auto conv = c10::static_intrusive_pointer_cast<NativeConv>(ctx->saved_data["conv"].toCapsule());
    auto grads_xw = conv->backward(dy, saved[0], saved[1], ctx->needs_input_grad(0),
                                   ctx->needs_input_grad(1));
    out[0] = grads_xw.first;
    out[1] = grads_xw.second;
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) {
      out[2] = dy.sum({0, 2, 3});
    }
    return out;
  }
};

}  // namespace

std::string driver_error() { return driver().error; }

void bind(pybind11::module& m) {
  namespace py = pybind11;
  py::class_<NativeLaunch, std::shared_ptr<NativeLaunch>>(m, "NativeLaunch",
                           "A compiled Triton kernel's launch with every non-tensor parameter "
                           "fixed (kernels/_common.Launch): call(tensors) -> launched")
      .def(py::init<std::vector<int64_t>, int64_t, py::list>(), py::arg("grid"),
           py::arg("n_tensors"), py::arg("params"))
      .def("add_variant", &NativeLaunch::add_variant, py::arg("device"), py::arg("aligned"),
           py::arg("dtypes"), py::arg("function"), py::arg("threads"), py::arg("shared_bytes"),
           "The compiled kernel (CUfunction handle) for tensors of these dtypes and 16-byte "
           "alignments on this device.")
      .def("__call__", [](const NativeLaunch& self, py::args args) {
             std::vector<at::Tensor> tensors;
             tensors.reserve(args.size());
             for (auto a : args) {
               if (!THPVariable_Check(a.ptr())) return false;
               tensors.push_back(THPVariable_Unpack(a.ptr()));
             }
             return self.launch(tensors);
           })
      .def_property_readonly("variants", &NativeLaunch::variants);
  py::class_<NativePlan, std::shared_ptr<NativePlan>>(m, "NativePlan",
                         "A plan's call in C++ (kernels/_plan.Plan): buffers [(sizes, "
                         "channels_last, dtype or slot) or (\"copy\", slot, dim order)], steps "
                         "[(NativeLaunch, slots)], result slot (copied into dim order "
                         "result_order after the launches where given) "
                         "slot; slots are a, b, bias-or-b, then the buffers. "
                         "call(a, b, bias) -> output, or None where the Python plan must run")
      .def(py::init<py::list, py::list, int64_t, std::vector<int64_t>>(), py::arg("buffers"),
           py::arg("steps"), py::arg("result"), py::arg("result_order") = std::vector<int64_t>())
      .def("__call__",
           [](const NativePlan& self, const at::Tensor& a, const at::Tensor& b,
              const c10::optional<at::Tensor>& c) -> py::object {
             auto out = self.run(a, b, c);
             return out.has_value() ? py::cast(*out) : py::none();
           },
           py::arg("a"), py::arg("b"), py::arg("c") = py::none());
  py::class_<NativeConv, c10::intrusive_ptr<NativeConv>>(
      m, "NativeConv",
      "A conv's training call with its autograd in C++ (kernels/_plan.Family.conv2d_train): "
      "NativeConv(forward NativePlan, python_forward(x, w, bias), python_backward(dy, x, w, "
      "need_input, need_weight) -> (grad_input, grad_weight)); call(x, w, bias) -> output")
      .def(py::init([](std::shared_ptr<NativePlan> forward, py::object python_forward,
                       py::object python_backward) {
             return c10::make_intrusive<NativeConv>(std::move(forward), std::move(python_forward),
                                                    std::move(python_backward));
           }),
           py::arg("forward"), py::arg("python_forward"), py::arg("python_backward"))
      .def("set_grad_plans", &NativeConv::set_grad_plans, py::arg("grad_input"),
           py::arg("grad_weight"), py::arg("grad_output"),
           "The native grad plans for grad_outputs like this one (None keeps a plan unset).")
      .def_property_readonly("has_grad_plans", &NativeConv::has_grad_plans)
      .def("__call__",
           [](const c10::intrusive_ptr<NativeConv>& self, const at::Tensor& x, const at::Tensor& w,
              const c10::optional<at::Tensor>& bias) {
             return NativeConvFunction::apply(x, w, bias, self);
           },
           py::arg("x"), py::arg("w"), py::arg("bias") = py::none());
  m.def("cuda_driver_error", &driver_error,
        "Why the CUDA driver API could not be loaded for native launches ('' when it was).");
}

}  // namespace triton_launch
}  // namespace fastconv
