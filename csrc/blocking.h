// Blocking parameters of the CPU kernels, in one place. The kernels use them,
// and `fastconv explain` reads them (through fastconv._C.blocking()) so that
// its cache model follows the same loop nest the kernels run.
#pragma once

#include <cstdint>

namespace fastconv {
namespace blocking {

// im2col: the column buffer holds at most this many bytes; output pixels are
// processed in tiles so the workspace does not grow with the batch (1x1
// stride-1 convs have no column buffer: one tile). 1 MiB
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
// near full speed: on ResNet-50's 1x1 layers (1 thread, batch 1, AVX-512 MKL)
// 128 x 512 items ran 5-7% faster than 64 x 256, 256 x 1024 no faster again.
constexpr int64_t kIm2colItemChannels = 128;
constexpr int64_t kIm2colItemPixels = 512;
// NHWC forward items cut the output channels (the GEMM's N) in blocks of this
// many: MKL's sgemm of 49 x 512 x 2048 (ResNet-50 layer 4, batch 1, 1 thread)
// took 0.99 ms in 128-channel calls, 0.83 in 256, 0.77 whole; 256 still gives
// a 512-channel layer two items for two threads.
constexpr int64_t kIm2colNhwcItemChannels = 256;
// NCHW 1x1 stride-1 forward (the input is the GEMM's B, no column buffer, one
// tile): an item is a whole image plane by a block of at most this many output
// channels. MKL's sgemm, 1 thread, ResNet-50's 1x1 layers at batch 1: 128 x 512
// items took 1.05-1.39x the time of one whole-image call, 256 x plane
// 0.98-1.17x (dev/cpu/results/gemm1x1). A layer of one such item is cut in two
// (channels from kIm2colPointwiseSplitChannels on, else the plane) for two
// threads.
constexpr int64_t kIm2colPointwiseItemChannels = 256;
constexpr int64_t kIm2colPointwiseSplitChannels = 128;
// ... but an item's inner block grows until it holds this many multiply-adds,
// so shallow GEMMs (1x1 convs with few channels) are not drowned in per-call
// overhead (three tensor views, an op dispatch and MKL's setup per call).
constexpr int64_t kIm2colItemMinMacs = 1 << 21;
// Backward GEMM calls cut the column-matrix dimension (C/g·R·S) in blocks of
// this many rows (grad_input) or columns (grad_weight).
constexpr int64_t kIm2colItemColumns = 256;
// grad_weight's items own blocks of dW, so a small dW (ResNet-50's 64x64 and
// 128x256 1x1 layers: one block) gave one item per tile and left the second
// thread idle (0.62-0.64x of oneDNN at 2 threads, 1.0-1.9x at 1). Where the
// blocks are fewer than kIm2colGradWeightMinItems, the tile's pixels (the
// reduction) are cut into parts as well; each part sums into its own partial
// dW and the parts are added in order at the end. The cut depends on the layer
// alone, so the result is the same for any thread count. A part keeps at least
// kIm2colGradWeightMinPartPixels pixels (the GEMM's depth) and all partials
// together at most kIm2colGradWeightMaxPartialBytes.
constexpr int64_t kIm2colGradWeightMinItems = 8;
constexpr int64_t kIm2colGradWeightMinPartPixels = 128;
constexpr int64_t kIm2colGradWeightMaxPartialBytes = 16 << 20;
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
// AVX-512 forward tiles: weights packed 16 output channels innermost (one zmm
// of floats) for groups of more than 8 output channels; 2 oc vectors x 12
// pixels or 1 x 24 = 24 zmm accumulators, plus the weight vectors and one
// broadcast, of 32 registers.
constexpr int64_t kDirectAvx512OcBlock = 16;
constexpr int64_t kDirectAvx512PixelTile = 12;
constexpr int64_t kDirectAvx512PixelTileSingle = 24;
// AVX-512 tiles over the padded, channel-blocked input (direct_blocked_avx512.cpp):
// up to this many output pixels of one row with one vector of 16 output
// channels (24 accumulators), or with two vectors (2 x 14 = 28 accumulators,
// 2 weight vectors and a broadcast: 31 of 32 zmm; 14 = a 14x14 plane's row).
constexpr int64_t kDirectBlockedAvx512PixelTile = 24;
constexpr int64_t kDirectBlockedAvx512PixelTilePair = 14;
// Dense layers with fewer output pixels (N*Ho*Wo) than this leave the tiles
// too little work per pass over the weights (ResNet-50's 7x7 layer 4 at batch 1:
// 49 pixels, 0.6x of im2col's speed); direct's grad_input hands them to im2col,
// and fastconv/_heuristics.py's auto does the same for the forward.
constexpr int64_t kDirectBlockedMinPixels = 128;
// Output rows per task of those tiles (at most; a plane's rows split into
// near-equal blocks, 14 -> 7 + 7, one block more where the task count would be
// odd, 56 -> 8 x 7, so two threads get equal shares of one image); a task packs the (rows - 1) * stride + R input rows they read, so
// taller blocks copy fewer rows twice (3x3 stride 1: 10 rows for 8).
constexpr int64_t kDirectBlockedAvx512RowBlock = 8;
// The tiles' reduction runs over blocks of this many input channels (one 64-byte
// line of a packed pixel), and within a block over (r, s, c): the input lines a
// tile reads (R rows x its pixels, one line each) stay in L1 across the R x S taps
// instead of streaming Cg * R * S floats per pixel from L2 (the weights stream
// either way).
constexpr int64_t kDirectBlockedAvx512CinBlock = 16;
// A task's tiles run over the input channels in passes of whole channel blocks
// whose packed weights (channels x R x S x OCV x 16 floats) take at most this
// many bytes: the pass's panel stays in L1 (48 KiB) across the task's tiles with
// their input windows, and the partial sums wait in memory between passes
// (3x3 with 2 oc vectors: 16 channels, an 18 KiB panel, 144 FMA steps per
// partial-sum load and store).
constexpr int64_t kDirectBlockedAvx512PanelBytes = 24 << 10;
// Floats added to a packed input pixel whose size is a multiple of 64 floats (4
// lines): a pixel of 256 channels is 1 KiB, so the same line of the 16 pixels x
// 3 rows a tile reads fell in 4 of L1's 64 sets (12 ways); with one line more per
// pixel (17 lines) consecutive pixels walk through all the sets.
constexpr int64_t kDirectBlockedAvx512PixelPad = 16;
// grad_weight over the same packed operands (grouped layers): a tile keeps at
// most this many zmm accumulators (taps x channels x oc vectors: 3 x 8 x 1 or
// 3 x 4 x 2), plus the grad_output vectors and a broadcast, over output-row
// blocks of at most kDirectBlockedAvx512GwBlockPixels pixels whose sums are
// added apart (a float sum over all N*Ho*Wo pixels loses accuracy; 256 as in
// direct.cpp's AVX2 grad_weight).
constexpr int64_t kDirectBlockedAvx512GwAccumulators = 24;
constexpr int64_t kDirectBlockedAvx512GwBlockPixels = 256;
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
// grad_weight NHWC 3x3 on AVX-512: channel vectors per register tile, whose 9
// taps all accumulate in registers (9 x 2 = 18 zmm accumulators + 2 grad_output
// vectors + 1 input).
constexpr int64_t kDepthwiseGradWeight3x3ChanVecs = 2;
// depthwise, AVX-512 (16 lanes). Register tile: kDepthwiseAvx512PixelTile output
// pixels x kDepthwiseAvx512ChanVecs channel vectors = 21 zmm accumulators plus
// 3 weight vectors; each tap costs 3 weight loads and 21 FMAs with a folded
// input load (2 loads per cycle keep up). 7 divides every MobileNetV2 and
// ConvNeXt plane width (112, 56, 28, 14, 7), so rows hold no partial tiles.
constexpr int64_t kDepthwiseAvx512PixelTile = 7;
constexpr int64_t kDepthwiseAvx512ChanVecs = 3;
// Sliding-window tiles (3x3, 5x5, 7x7, stride 1 or 2, chan_slide_avx512):
// output pixels of one row x channel vectors; a row's last tile may take half
// as many pixels. A window column feeds pixels x vectors / stride independent
// FMAs, which must cover the FMA latency (4 cycles x 2 ports = 8 in flight).
// 5x5 and 7x7: 7 pixels x 2 vectors (14 accumulators + 14 weights + 2 inputs =
// 30 zmm); 7 divides every ConvNeXt plane width (56, 28, 14, 7). 3x3: 7 pixels
// x 3 vectors (21 + 9 + 1 = 31 zmm), a pixel's 48 channels 3 adjacent cache
// lines (1 vector x 14 pixels measured up to 1.6x slower on NHWC batch 8:
// twice the passes over each input line).
constexpr int64_t kDepthwiseAvx512SlidePixels = 7;
constexpr int64_t kDepthwiseAvx512SlideChanVecs = 2;
constexpr int64_t kDepthwiseAvx512SlideSmallPixels = 7;
constexpr int64_t kDepthwiseAvx512SlideSmallChanVecs = 3;
// NHWC outputs of at least this many bytes (4x a core's 2 MiB L2) are written
// with non-temporal stores by the sliding-window tiles: they would leave the
// caches before the next layer reads them anyway.
constexpr int64_t kDepthwiseAvx512StreamMinBytes = 8 << 20;
// NHWC parallel task: one output row x this many channels (two tile widths).
constexpr int64_t kDepthwiseAvx512ChannelGroup = 96;
// Channel-blocked tiles (NCHW, and NHWC planes at most
// kDepthwiseAvx512NhwcTileMaxWidth wide): a task writes this many channels of
// a block of input rows, zero-padded, into a [row][column][channel] tile of
// about kDepthwiseAvx512TileBytes (L2-resident), runs the channel-vector
// kernel on it without border masks and (NCHW) transposes the output back.
// Up to 28 wide, 2 of every 4 pixel tiles (7 pixels) touch a 7x7 border.
constexpr int64_t kDepthwiseAvx512ChannelBlock = 48;
constexpr int64_t kDepthwiseAvx512TileBytes = 128 << 10;
constexpr int64_t kDepthwiseAvx512NhwcTileMaxWidth = 28;
// ... and kernels of at least this many taps (7x7: 8-15% on ConvNeXt-T stages 2
// and 3; on 3x3 layers the copy cost more than the border masks).
constexpr int64_t kDepthwiseAvx512NhwcTileMinTaps = 25;
// Widest kernel (S) the channel-vector kernels take: a per-column mask table on the stack.
constexpr int64_t kDepthwiseAvx512ChanMaxS = 64;
// NCHW stride-1 kernels of at most kDepthwiseAvx512NchwRowsMaxTaps taps on planes
// at least this wide keep the row kernels (full row vectors; the tile transposes
// cost more than they save).
constexpr int64_t kDepthwiseAvx512NchwRowsMinWidth = 56;
constexpr int64_t kDepthwiseAvx512NchwRowsMaxTaps = 9;
// NCHW natively on rows (AVX-512, nchw_slide_tile_avx512): 3x3/5x5/7x7 kernels at
// stride 1 or 2 on planes at least kDepthwiseAvx512NchwSlideMinWidth x stride
// output columns wide run on 16-column row vectors, no transposes; narrower
// planes (a 7-wide row fills 7 of 16 lanes) take the channel-block tiles.
// Measured (1 thread, vs the tiles): 14-wide stride-1 planes faster on rows
// (MobileNetV2 b8/b12, ConvNeXt-T stage 3), 14-wide stride-2 outputs (b7)
// slower, 28-wide stride-2 outputs (b4) faster.
// Register tile: kDepthwiseAvx512NchwSlideRows output rows x up to
// kDepthwiseAvx512NchwSlideWidthVecs row vectors; rows of at most 2 vectors
// take twice the rows, so a tile keeps at least 8 independent FMA chains
// (4 cycles x 2 ports) and each loaded input vector feeds up to that many rows.
constexpr int64_t kDepthwiseAvx512NchwSlideMinWidth = 14;
constexpr int64_t kDepthwiseAvx512NchwSlideRows = 4;
constexpr int64_t kDepthwiseAvx512NchwSlideWidthVecs = 4;
// ... tasks of this many output rows of one plane (rounded up to the tile's
// rows): the (R - 1)-row halo is copied once per task, and rows are 56-112
// columns (a 32-row task's buffer 11-20 KiB, L1).
constexpr int64_t kDepthwiseAvx512NchwSlideTaskRows = 32;
// NCHW backward: planes at most this wide run the NHWC gradient kernels on
// transposed copies (a 7..28-wide row leaves 16-lane row vectors part empty).
constexpr int64_t kDepthwiseAvx512NchwBwdMaxWidth = 28;

// Pointwise (1x1) GEMM on AVX-512 (csrc/pointwise_gemm_avx512.cpp). Weights
// packed in panels of 32 output channels (two zmm) per input channel.
constexpr int64_t kGemmAvx512PanelWidth = 32;
// channels_last register tile: 14 pixels x 32 channels = 28 zmm accumulators,
// plus the two panel vectors and a broadcast: 31 of 32. Per input channel 14
// broadcasts + 2 loads feed 28 FMAs (FMA-bound at 2 loads and 2 FMAs a cycle).
constexpr int64_t kGemmAvx512NhwcRows = 14;
// NCHW register tile: 8 output channels (broadcast from a panel) x 3 vectors
// of 16 pixels = 24 accumulators; 11 loads per 24 FMAs.
constexpr int64_t kGemmAvx512NchwChannels = 8;
constexpr int64_t kGemmAvx512NchwPixelVecs = 3;
// Input channels per reduction block: a panel block is KC x 32 floats (32 KiB
// at 256), held in L1 (48 KiB) while the tiles of a pixel block pass.
constexpr int64_t kGemmAvx512KC = 256;
// NCHW: a tile's input block (KC x 48 pixels, 24 KiB at 128) and the panel
// block (16 KiB) share L1 while the panel's four 8-channel tiles run.
constexpr int64_t kGemmAvx512NchwKC = 128;
// Pixels per parallel task (channels_last: its KC-long input rows, 224 KiB,
// stay in L2 across the panels; NCHW: per image, rounded up to 16).
constexpr int64_t kGemmAvx512NhwcPixelBlock = 224;
// NCHW planes of at most this many pixels run the channels_last tile on
// transposed copies (modules, 1 thread, vs nn.Conv2d: ResNet-50's 7x7 layers
// 1.0-1.13x against MKL's 0.95-1.0x; at 14x14 the copies lost, 0.70-0.82x
// against 0.91-0.98x).
constexpr int64_t kGemmAvx512NchwViaNhwcMaxPixels = 49;
// Modules run the packed GEMM (cached panels) on 1x1 layers with at most this
// many output pixels (N·Ho·Wo); above, im2col's MKL call (fastconv/_cpu.py).
// channels_last modules vs nn.Conv2d, 1 thread: up to 3136 pixels the GEMM
// 0.89-2.06x where MKL through im2col took 0.73-1.33x; at 6272 (28x28, batch
// 8) a tie, at 25088 (56x56) 0.76-1.01x against 0.94-1.06x.
constexpr int64_t kGemmAvx512MaxPixels = 3136;
constexpr int64_t kGemmAvx512NchwPixelBlock = 192;
// Functional 1x1 calls (no cached panels) run the GEMM packing panels per
// task (pointwise_gemm_forward_unpacked) up to this many output pixels
// (N·Ho·Wo); above, im2col's MKL sgemm. ResNet-50, channels_last, 1 thread,
// vs oneDNN: 49-196 pixels 0.92-1.51x where MKL took 0.61-0.98x, 392 and 784
// 0.93-1.24x against 0.88-1.20x, 1568 a tie, 3136-25088 0.76-0.92x against
// 0.84-1.08x. NCHW: only strided layers on planes of at most
// kGemmAvx512NchwViaNhwcMaxPixels (the gather copies the input either way;
// at stride 1 the transposed copies lost to MKL at batch 1, 0.81-0.84x
// against 0.96-0.99x).
constexpr int64_t kGemmAvx512UnpackedMaxPixels = 1568;
// Without cached panels, tasks walk the panels over groups of pixel blocks
// whose input rows take at most this many bytes (in L2, 2 MiB per core here),
// so each panel is packed once per group.
constexpr int64_t kGemmAvx512UnpackedGroupBytes = 1 << 20;

// The BLAS GEMM that im2col calls is modelled in explain's cache simulator as a
// Goto/BLIS blocked GEMM with the BLIS Haswell sgemm blocking
// (bli_cntx_init_haswell.c): MR x NR register tile, MC x KC packed A block
// (L2), KC x NC packed B panel (L3). Not our kernels' blocking: the model's.
constexpr int64_t kGemmMR = 6;
constexpr int64_t kGemmNR = 16;
constexpr int64_t kGemmMC = 168;
constexpr int64_t kGemmKC = 256;
constexpr int64_t kGemmNC = 4080;
// 0: MKL's no-copy kernels (what ATen runs for im2col's items here); 1: Goto
// with packed A and B.
constexpr int64_t kGemmPack = 0;

}  // namespace blocking
}  // namespace fastconv

// Every constant above, with the name fastconv._C.blocking() exports it under
// (explain's cache model and the simulator read them from there). A constant
// added above is added here too (tests/test_blocking.py checks).
#define FASTCONV_BLOCKING_CONSTANTS(X)                                              \
  X(im2col_max_workspace_bytes, kIm2colMaxWorkspaceBytes)                           \
  X(im2col_min_tile_pixels, kIm2colMinTilePixels)                                   \
  X(im2col_item_channels, kIm2colItemChannels)                                      \
  X(im2col_item_pixels, kIm2colItemPixels)                                          \
  X(im2col_nhwc_item_channels, kIm2colNhwcItemChannels)                             \
  X(im2col_pointwise_item_channels, kIm2colPointwiseItemChannels)                   \
  X(im2col_pointwise_split_channels, kIm2colPointwiseSplitChannels)                 \
  X(im2col_item_min_macs, kIm2colItemMinMacs)                                       \
  X(im2col_item_columns, kIm2colItemColumns)                                        \
  X(im2col_col2im_channels, kIm2colCol2imChannels)                                  \
  X(im2col_grad_weight_min_items, kIm2colGradWeightMinItems)                        \
  X(im2col_grad_weight_min_part_pixels, kIm2colGradWeightMinPartPixels)             \
  X(im2col_grad_weight_max_partial_bytes, kIm2colGradWeightMaxPartialBytes)         \
  X(direct_oc_block, kDirectOcBlock)                                                \
  X(direct_oc_vectors, kDirectOcVectors)                                            \
  X(direct_pixel_tile, kDirectPixelTile)                                            \
  X(direct_pixel_tile_single, kDirectPixelTileSingle)                               \
  X(direct_avx512_oc_block, kDirectAvx512OcBlock)                                   \
  X(direct_avx512_pixel_tile, kDirectAvx512PixelTile)                               \
  X(direct_avx512_pixel_tile_single, kDirectAvx512PixelTileSingle)                  \
  X(direct_blocked_avx512_pixel_tile, kDirectBlockedAvx512PixelTile)                \
  X(direct_blocked_avx512_pixel_tile_pair, kDirectBlockedAvx512PixelTilePair)       \
  X(direct_blocked_min_pixels, kDirectBlockedMinPixels)                             \
  X(direct_blocked_avx512_row_block, kDirectBlockedAvx512RowBlock)                  \
  X(direct_blocked_avx512_cin_block, kDirectBlockedAvx512CinBlock)                  \
  X(direct_blocked_avx512_panel_bytes, kDirectBlockedAvx512PanelBytes)              \
  X(direct_blocked_avx512_pixel_pad, kDirectBlockedAvx512PixelPad)                  \
  X(direct_blocked_avx512_gw_accumulators, kDirectBlockedAvx512GwAccumulators)      \
  X(direct_blocked_avx512_gw_block_pixels, kDirectBlockedAvx512GwBlockPixels)       \
  X(direct_cin_block_bytes, kDirectCinBlockBytes)                                   \
  X(direct_row_block, kDirectRowBlock)                                              \
  X(direct_grad_weight_channel_tile, kDirectGradWeightChannelTile)                  \
  X(depthwise_vec_width, kDepthwiseVecWidth)                                        \
  X(depthwise_nhwc_pixel_tile, kDepthwiseNhwcPixelTile)                             \
  X(depthwise_nhwc_chan_vecs, kDepthwiseNhwcChanVecs)                               \
  X(depthwise_nhwc_channel_group, kDepthwiseNhwcChannelGroup)                       \
  X(depthwise_nchw_width_vecs, kDepthwiseNchwWidthVecs)                             \
  X(depthwise_nchw_reg_rows, kDepthwiseNchwRegRows)                                 \
  X(depthwise_nchw_tile_accs, kDepthwiseNchwTileAccs)                               \
  X(depthwise_row_tile, kDepthwiseRowTile)                                          \
  X(depthwise_grad_weight_min_chunk_rows, kDepthwiseGradWeightMinChunkRows)         \
  X(depthwise_grad_weight_max_chunks, kDepthwiseGradWeightMaxChunks)                \
  X(depthwise_grad_weight_max_partial_bytes, kDepthwiseGradWeightMaxPartialBytes)   \
  X(depthwise_grad_weight_tap_group, kDepthwiseGradWeightTapGroup)                  \
  X(depthwise_grad_weight_unroll, kDepthwiseGradWeightUnroll)                       \
  X(depthwise_grad_weight3x3_chan_vecs, kDepthwiseGradWeight3x3ChanVecs)             \
  X(depthwise_avx512_pixel_tile, kDepthwiseAvx512PixelTile)                        \
  X(depthwise_avx512_chan_vecs, kDepthwiseAvx512ChanVecs)                          \
  X(depthwise_avx512_slide_pixels, kDepthwiseAvx512SlidePixels)                    \
  X(depthwise_avx512_slide_chan_vecs, kDepthwiseAvx512SlideChanVecs)               \
  X(depthwise_avx512_slide_small_pixels, kDepthwiseAvx512SlideSmallPixels)          \
  X(depthwise_avx512_slide_small_chan_vecs, kDepthwiseAvx512SlideSmallChanVecs)     \
  X(depthwise_avx512_stream_min_bytes, kDepthwiseAvx512StreamMinBytes)              \
  X(depthwise_avx512_channel_group, kDepthwiseAvx512ChannelGroup)                  \
  X(depthwise_avx512_channel_block, kDepthwiseAvx512ChannelBlock)                  \
  X(depthwise_avx512_tile_bytes, kDepthwiseAvx512TileBytes)                        \
  X(depthwise_avx512_nhwc_tile_max_width, kDepthwiseAvx512NhwcTileMaxWidth)        \
  X(depthwise_avx512_nhwc_tile_min_taps, kDepthwiseAvx512NhwcTileMinTaps)          \
  X(depthwise_avx512_chan_max_s, kDepthwiseAvx512ChanMaxS)                          \
  X(depthwise_avx512_nchw_rows_min_width, kDepthwiseAvx512NchwRowsMinWidth)        \
  X(depthwise_avx512_nchw_rows_max_taps, kDepthwiseAvx512NchwRowsMaxTaps)          \
  X(depthwise_avx512_nchw_slide_min_width, kDepthwiseAvx512NchwSlideMinWidth)      \
  X(depthwise_avx512_nchw_slide_rows, kDepthwiseAvx512NchwSlideRows)                \
  X(depthwise_avx512_nchw_slide_width_vecs, kDepthwiseAvx512NchwSlideWidthVecs)     \
  X(depthwise_avx512_nchw_slide_task_rows, kDepthwiseAvx512NchwSlideTaskRows)       \
  X(depthwise_avx512_nchw_bwd_max_width, kDepthwiseAvx512NchwBwdMaxWidth)         \
  X(gemm_avx512_panel_width, kGemmAvx512PanelWidth)                                 \
  X(gemm_avx512_nhwc_rows, kGemmAvx512NhwcRows)                                     \
  X(gemm_avx512_nchw_channels, kGemmAvx512NchwChannels)                             \
  X(gemm_avx512_nchw_pixel_vecs, kGemmAvx512NchwPixelVecs)                          \
  X(gemm_avx512_kc, kGemmAvx512KC)                                                  \
  X(gemm_avx512_nchw_kc, kGemmAvx512NchwKC)                                         \
  X(gemm_avx512_nhwc_pixel_block, kGemmAvx512NhwcPixelBlock)                        \
  X(gemm_avx512_nchw_pixel_block, kGemmAvx512NchwPixelBlock)                        \
  X(gemm_avx512_nchw_via_nhwc_max_pixels, kGemmAvx512NchwViaNhwcMaxPixels)          \
  X(gemm_avx512_max_pixels, kGemmAvx512MaxPixels)                                   \
  X(gemm_avx512_unpacked_max_pixels, kGemmAvx512UnpackedMaxPixels)                 \
  X(gemm_avx512_unpacked_group_bytes, kGemmAvx512UnpackedGroupBytes)               \
  X(gemm_mr, kGemmMR)                                                               \
  X(gemm_nr, kGemmNR)                                                               \
  X(gemm_mc, kGemmMC)                                                               \
  X(gemm_kc, kGemmKC)                                                               \
  X(gemm_nc, kGemmNC)                                                               \
  X(gemm_pack, kGemmPack)
