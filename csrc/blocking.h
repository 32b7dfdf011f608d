// Blocking parameters of the CPU kernels, in one place. The kernels use them,
// and `fastconv explain` reads them (through fastconv._C.blocking()) so that
// its cache model follows the same loop nest the kernels run.
#pragma once

#include <cstdint>

namespace fastconv {
namespace blocking {

// im2col: the column buffer holds at most this many bytes; output pixels are
// processed in tiles so the workspace does not grow with the batch. 1 MiB
// keeps the tile in L2 (2 MiB/core here) between the im2col copy and the GEMM
// that reads it: measured 0.25..8 MiB on ResNet-50 3x3 layers, 0.5-1 MiB best
// (4 MiB was 10-35% slower on 56x56 layers).
constexpr int64_t kIm2colMaxWorkspaceBytes = 1 << 20;
// Smallest pixel tile, so the GEMM stays efficient for very deep reductions
// (512x512 3x3: 64-pixel tiles ran ~15% slower than 128).
constexpr int64_t kIm2colMinTilePixels = 128;
// Each tile's GEMM is cut into independent calls (run in parallel, one thread
// each) of at most this many output channels x output pixels. The cut depends
// only on the layer, never on the thread count, so every output element is
// summed in the same order whatever torch.get_num_threads() is.
// Small enough that one tile gives both threads work (a 1 MiB tile of a
// 64-channel 3x3 layer is ~450 pixels), large enough for MKL's sgemm to run
// near full speed (N >= ~100).
constexpr int64_t kIm2colItemChannels = 64;
constexpr int64_t kIm2colItemPixels = 256;
// ... but an item's inner block grows until it holds this many multiply-adds,
// so shallow GEMMs (1x1 convs with few channels) are not drowned in per-call
// overhead (three tensor views, an op dispatch and MKL's setup per call).
constexpr int64_t kIm2colItemMinMacs = 1 << 21;
// Backward GEMM calls cut the column-matrix dimension (C/g·R·S) in blocks of
// this many rows (grad_input) or columns (grad_weight).
constexpr int64_t kIm2colItemColumns = 256;
// NHWC col2im: channels per parallel work item (a thread owns a channel block,
// so the scatter-add has no races).
constexpr int64_t kIm2colCol2imChannels = 16;

}  // namespace blocking
}  // namespace fastconv
