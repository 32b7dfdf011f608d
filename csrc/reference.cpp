// The plain seven-loop convolution, forward and both gradients.
// It reads tensors through their strides, so any layout works. It is the
// baseline every tuned kernel is compared with, and it is slow on purpose:
// nothing is blocked, every MAC re-reads input and weight from memory.
#include "ops.h"
#include "util.h"

namespace fastconv {

namespace {


}  // namespace

at::Tensor reference_conv2d(const at::Tensor& input, const at::Tensor& weight,
                            const c10::optional<at::Tensor>& bias, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                            c10::string_view activation) {
  const char* op = "fastconv::reference_conv2d";
  const auto p = check_forward_args(op, input, weight, bias, stride, padding, dilation, groups);
  const auto act = parse_activation(std::string(activation));
  auto out = new_output({p.N, p.K, p.Ho, p.Wo}, input.options(), conv_memory_format(input, weight));
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "reference_conv2d", [&] {
    const scalar_t* x = input.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    const Strides4 xs(input), ws(weight), ys(out);
    at::parallel_for(0, p.N * p.K, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nk = begin; nk < end; ++nk) {
        const int64_t n = nk / p.K, k = nk % p.K, g = k / p.Kg();
        for (int64_t oh = 0; oh < p.Ho; ++oh)
          for (int64_t ow = 0; ow < p.Wo; ++ow) {
            double acc = 0;
            for (int64_t c = 0; c < p.Cg; ++c)
              for (int64_t r = 0; r < p.R; ++r) {
                const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
                if (ih < 0 || ih >= p.H) continue;
                for (int64_t s = 0; s < p.S; ++s) {
                  const int64_t iw = ow * p.stride_w - p.pad_left + s * p.dil_w;
                  if (iw < 0 || iw >= p.W) continue;
                  acc += double(x[xs.at(n, g * p.Cg + c, ih, iw)]) * double(w[ws.at(k, c, r, s)]);
                }
              }
            y[ys.at(n, k, oh, ow)] = scalar_t(acc);
          }
      }
    });
  });
  bias_activation_(out, bias, act);
  return out;
}

at::Tensor reference_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                       at::IntArrayRef input_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation,
                                       int64_t groups) {
  const char* op = "fastconv::reference_conv2d_grad_input";
  const auto p = check_grad_input_args(op, grad_output, weight, input_size, stride, padding,
                                       dilation, groups);
  auto gin = new_output(input_size, grad_output.options(),
                        is_channels_last(grad_output) ? at::MemoryFormat::ChannelsLast
                                                      : at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), "reference_conv2d_grad_input", [&] {
    const scalar_t* dy = grad_output.data_ptr<scalar_t>();
    const scalar_t* w = weight.data_ptr<scalar_t>();
    scalar_t* dx = gin.data_ptr<scalar_t>();
    const Strides4 dys(grad_output), ws(weight), dxs(gin);
    at::parallel_for(0, p.N * p.C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t nc = begin; nc < end; ++nc) {
        const int64_t n = nc / p.C, ci = nc % p.C, g = ci / p.Cg, c = ci % p.Cg;
        for (int64_t ih = 0; ih < p.H; ++ih)
          for (int64_t iw = 0; iw < p.W; ++iw) {
            double acc = 0;
            for (int64_t r = 0; r < p.R; ++r) {
              const int64_t th = ih + p.pad_top - r * p.dil_h;
              if (th < 0 || th % p.stride_h) continue;
              const int64_t oh = th / p.stride_h;
              if (oh >= p.Ho) continue;
              for (int64_t s = 0; s < p.S; ++s) {
                const int64_t tw = iw + p.pad_left - s * p.dil_w;
                if (tw < 0 || tw % p.stride_w) continue;
                const int64_t ow = tw / p.stride_w;
                if (ow >= p.Wo) continue;
                for (int64_t kk = 0; kk < p.Kg(); ++kk) {
                  const int64_t k = g * p.Kg() + kk;
                  acc += double(dy[dys.at(n, k, oh, ow)]) * double(w[ws.at(k, c, r, s)]);
                }
              }
            }
            dx[dxs.at(n, ci, ih, iw)] = scalar_t(acc);
          }
      }
    });
  });
  return gin;
}

at::Tensor reference_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                        at::IntArrayRef weight_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation,
                                        int64_t groups) {
  const char* op = "fastconv::reference_conv2d_grad_weight";
  const auto p = check_grad_weight_args(op, grad_output, input, weight_size, stride, padding,
                                        dilation, groups);
  auto gw = new_output(weight_size, input.options(), at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "reference_conv2d_grad_weight", [&] {
    const scalar_t* dy = grad_output.data_ptr<scalar_t>();
    const scalar_t* x = input.data_ptr<scalar_t>();
    scalar_t* dw = gw.data_ptr<scalar_t>();
    const Strides4 dys(grad_output), xs(input), dws(gw);
    at::parallel_for(0, p.K * p.Cg, 1, [&](int64_t begin, int64_t end) {
      for (int64_t kc = begin; kc < end; ++kc) {
        const int64_t k = kc / p.Cg, c = kc % p.Cg, g = k / p.Kg();
        for (int64_t r = 0; r < p.R; ++r)
          for (int64_t s = 0; s < p.S; ++s) {
            double acc = 0;
            for (int64_t n = 0; n < p.N; ++n)
              for (int64_t oh = 0; oh < p.Ho; ++oh) {
                const int64_t ih = oh * p.stride_h - p.pad_top + r * p.dil_h;
                if (ih < 0 || ih >= p.H) continue;
                for (int64_t ow = 0; ow < p.Wo; ++ow) {
                  const int64_t iw = ow * p.stride_w - p.pad_left + s * p.dil_w;
                  if (iw < 0 || iw >= p.W) continue;
                  acc += double(dy[dys.at(n, k, oh, ow)]) * double(x[xs.at(n, g * p.Cg + c, ih, iw)]);
                }
              }
            dw[dws.at(k, c, r, s)] = scalar_t(acc);
          }
      }
    });
  });
  return gw;
}

}  // namespace fastconv
