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

// direct: weights are packed [group][Kg/8 blocks][Cg][R][S][8] so that one
// AVX2 vector holds 8 output channels of one (c, r, s) tap.
constexpr int64_t kDirectOcBlock = 8;
// Register tile of the forward kernel: kDirectOcVectors vectors of output
// channels x kDirectPixelTile output pixels = 12 ymm accumulators, plus the
// weight vectors and one broadcast: 15 of the 16 ymm registers.
constexpr int64_t kDirectOcVectors = 2;
constexpr int64_t kDirectPixelTile = 6;
// When a group has a single oc block (Kg <= 8) the tile is 1 vector x this
// many pixels, again 12 accumulators.
constexpr int64_t kDirectPixelTileSingle = 12;
// Input-channel cache blocking: the reduction over Cg runs in blocks whose
// packed weights (block x R x S x kDirectOcVectors x 8 floats) take at most
// this many bytes, so they stay in L1 (48 KiB here) across all tiles of a
// task's rows; partial sums wait in a row buffer between blocks.
constexpr int64_t kDirectCinBlockBytes = 16 << 10;
// Output rows per parallel task: tasks are (n, group, oc-vector pair, row block).
constexpr int64_t kDirectRowBlock = 4;
// grad_weight: a tile is kDirectOcVectors x 8 output channels x this many
// input channels x up to 12 / (vectors x channels) taps of one kernel row.
constexpr int64_t kDirectGradWeightChannelTile = 2;
// depthwise (csrc/depthwise.cpp). Depthwise is bandwidth-bound (~2*R*S flops
// per ~8 bytes moved), so the tiles aim at keeping every loaded vector busy and
// every input row in L1 while it is used, not at peak FMA throughput.
// Lanes per vector: 8 floats in an AVX2 register (the portable path keeps the
// same lane blocks so the compiler can vectorize it).
constexpr int64_t kDepthwiseVecWidth = 8;
// NHWC register tile: output pixels x channel vectors; each weight vector is
// loaded once per tap and used by every pixel of the tile (4x2 = 8 accumulators).
constexpr int64_t kDepthwiseNhwcPixelTile = 4;
constexpr int64_t kDepthwiseNhwcChanVecs = 2;
// NHWC parallel task: one output row x this many channels (256 measured a
// little better than 64: fewer passes over each input row).
constexpr int64_t kDepthwiseNhwcChannelGroup = 256;
// NCHW register tile: up to kDepthwiseNchwWidthVecs width vectors x
// kDepthwiseNchwRegRows output rows (2 x 4 = 8 accumulators, kDepthwiseNchwTileAccs);
// the rows share each tap's weight broadcast. Rows of at most one vector
// (Wo <= 8) take 2 x kDepthwiseNchwRegRows rows instead.
constexpr int64_t kDepthwiseNchwWidthVecs = 4;
constexpr int64_t kDepthwiseNchwRegRows = 2;
constexpr int64_t kDepthwiseNchwTileAccs = 8;
// NCHW parallel task: a block of output rows of one channel; the input rows the
// block reads are copied once into a zero-padded, stride-phase-split buffer.
constexpr int64_t kDepthwiseRowTile = 16;
// grad_weight: the reduction over N*Ho is split into chunks of output rows
// chosen from the problem alone (never from the thread count), each chunk
// writes its own partial sums, and the chunks are added in order, so the
// result is bitwise the same for any number of threads.
constexpr int64_t kDepthwiseGradWeightMinChunkRows = 4;
constexpr int64_t kDepthwiseGradWeightMaxChunks = 64;
constexpr int64_t kDepthwiseGradWeightMaxPartialBytes = 16 << 20;
// grad_weight NCHW: kernel columns accumulated per sweep of a grad_output row
// (each loaded grad_output vector feeds this many taps).
constexpr int64_t kDepthwiseGradWeightTapGroup = 6;
// grad_weight NHWC: independent accumulators per channel vector (hides FMA latency).
constexpr int64_t kDepthwiseGradWeightUnroll = 4;

}  // namespace blocking
}  // namespace fastconv
