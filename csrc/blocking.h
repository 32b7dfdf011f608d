// Blocking parameters of the CPU kernels, in one place. The kernels use them,
// and `fastconv explain` reads them (through fastconv._C.blocking()) so that
// its cache model follows the same loop nest the kernels run.
#pragma once

#include <cstdint>

namespace fastconv {
namespace blocking {

// im2col: the column buffer holds at most this many bytes; output pixels are
// processed in tiles so the workspace does not grow with the batch.
constexpr int64_t kIm2colMaxWorkspaceBytes = 4 << 20;
// Smallest pixel tile, so the GEMM stays efficient for very deep reductions.
constexpr int64_t kIm2colMinTilePixels = 64;
// Each tile's GEMM is cut into independent calls (run in parallel, one thread
// each) of at most this many output channels x output pixels. The cut depends
// only on the layer, never on the thread count, so every output element is
// summed in the same order whatever torch.get_num_threads() is.
constexpr int64_t kIm2colItemChannels = 128;
constexpr int64_t kIm2colItemPixels = 512;
// Backward GEMM calls cut the column-matrix dimension (C/g·R·S) in blocks of
// this many rows (grad_input) or columns (grad_weight).
constexpr int64_t kIm2colItemColumns = 256;
// NHWC col2im: channels per parallel work item (a thread owns a channel block,
// so the scatter-add has no races).
constexpr int64_t kIm2colCol2imChannels = 16;

}  // namespace blocking
}  // namespace fastconv
