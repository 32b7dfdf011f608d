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

}  // namespace blocking
}  // namespace fastconv
