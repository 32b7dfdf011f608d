// A trace-driven cache simulator for the CPU kernels' loop nests (used by
// `fastconv explain --simulate` and the cachegrind validation).
//
// The hierarchy is a chain of set-associative LRU caches with one line size.
// Policy (the same as valgrind's cachegrind, so the two can be compared):
// non-inclusive / non-exclusive ("NINE"): a miss at level i goes to level i+1
// and the line is filled into every level that missed; evictions never
// back-invalidate upper levels. Writes allocate (write-allocate, write-back);
// a dirty victim is written back into the next level (allocated there if
// absent) and counted as a writeback, but writebacks are not counted as
// accesses, as in cachegrind.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "cpu_features.h"

namespace fastconv {
namespace cachesim {

struct LevelConfig {
  int64_t size_bytes;
  int64_t ways;
  int64_t line_bytes;
};

struct LevelStats {
  int64_t accesses = 0, hits = 0, misses = 0, writebacks = 0;
};

// Operands of a conv's address stream; each lives at its own base address.
enum Operand : int {
  kInput = 0, kWeight, kOutput, kColumn, kPackedWeight, kPackA, kPackB, kScratch,
  kTile,  // a kernel's padded or transposed tile buffers (depthwise's AVX-512 channel blocks)
  kNumOperands
};
const char* operand_name(int op);

// Geometry of one conv (elements), plus the layout and element size.
struct Geometry {
  int64_t N, C, H, W, K, R, S;
  int64_t sh = 1, sw = 1, pt = 0, pb = 0, pl = 0, pr = 0, dh = 1, dw = 1, groups = 1;
  int64_t elem = 4;
  bool nhwc = false;
  int64_t Cg() const { return C / groups; }
  int64_t Kg() const { return K / groups; }
  int64_t Ho() const { return (H + pt + pb - dh * (R - 1) - 1) / sh + 1; }
  int64_t Wo() const { return (W + pl + pr - dw * (S - 1) - 1) / sw + 1; }
};

struct Result {
  std::vector<LevelStats> levels;
  int64_t l1_bytes = 0;            // bytes the loads/stores asked for
  int64_t accesses = 0;            // load/store instructions (a straddling one counts once)
  std::vector<int64_t> operand_accesses, operand_l1_misses, operand_last_misses;
  std::vector<int64_t> reuse_hist;  // log2 buckets of reuse distance in lines; [0] = distance 0
  int64_t reuse_cold = 0;           // first touches (infinite distance)
  int64_t units_total = 0, units_counted = 0;
  double scale = 1.0;               // sampled counts were multiplied by this
};

struct Options {
  std::vector<LevelConfig> levels;
  int64_t sample_accesses = 0;  // counted accesses budget; 0 = simulate everything
  bool reuse_histogram = false;
  // Valgrind's view: its cache simulation (callgrind, VEX IR) does not see AVX
  // masked stores (vmaskmovps: measured, 0 of 131,072 stores counted; loads not measured),
  // so the accesses the nests mark as masked are dropped.
  bool skip_masked = false;
};

// Replays `algo` ("reference", "im2col", "direct", "depthwise") on geometry g
// with blocking constants `blocking` (the dict of fastconv._C.blocking()), as
// the kernels run it on instruction set `isa` (it picks the loop nest and the
// vector width; float64 runs the portable path on any ISA).
Result simulate(const std::string& algo, const Geometry& g,
                const std::map<std::string, int64_t>& blocking, const Options& opt, CpuIsa isa);

// Replays raw (address, bytes, is_write) triples (for tests of the simulator).
Result replay(const std::vector<int64_t>& addr, const std::vector<int64_t>& bytes,
              const std::vector<bool>& write, const Options& opt);

// The first `max_records` accesses of work units [unit_begin, unit_end):
// (operand, byte offset, bytes, is_write) rows (for the access-pattern pictures).
std::vector<std::vector<int64_t>> record(const std::string& algo, const Geometry& g,
                                         const std::map<std::string, int64_t>& blocking, CpuIsa isa,
                                         int64_t unit_begin, int64_t unit_end, int64_t max_records);

// Read bandwidth of a `bytes` buffer summed `reps` times (GB/s), for the roofline ceilings.
double read_bandwidth_gbs(int64_t bytes, int64_t reps);

}  // namespace cachesim
}  // namespace fastconv

namespace pybind11 { class module_; }
namespace fastconv {
namespace cachesim {
// Adds cachesim_* and read_bandwidth_gbs to the fastconv._C module.
void bind(pybind11::module_& m);

}  // namespace cachesim
}  // namespace fastconv
