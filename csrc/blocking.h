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

}  // namespace blocking
}  // namespace fastconv
