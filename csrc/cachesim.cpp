// Trace-driven cache simulator: the address streams of the CPU kernels' loop
// nests, replayed through a set-associative LRU hierarchy (see cachesim.h for
// the policy). The loop nests below follow the kernels (reference.cpp,
// im2col.cpp, direct.cpp, depthwise.cpp) and read the same blocking constants;
// each generator is a template over a "sink" that either simulates the access
// or records it (for pictures).
#include "cachesim.h"
#include "blocking.h"
#include "util.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "cpu_features.h"
#if FASTCONV_X86
#include <immintrin.h>
#endif

namespace fastconv {
namespace cachesim {

const char* operand_name(int op) {
  static const char* names[] = {"input", "weight", "output", "column", "packed_weight",
                                "pack_a", "pack_b", "scratch", "tile"};
  return (op >= 0 && op < kNumOperands) ? names[op] : "?";
}

namespace {

// The kernels' path: float64 always runs the portable one (16-byte vectors,
// the AVX2 path's blocking); float32 the ISA's. `vb`: bytes per vector access
// (also of the BLAS GEMM's, which follows the same ISA).
struct Nest {
  CpuIsa isa;
  int64_t vb;
};

Nest nest_of(CpuIsa isa, int64_t elem) {
  const CpuIsa eff = elem == 4 ? isa : CpuIsa::Portable;
  return {eff, isa == CpuIsa::Avx512 ? 64 : (isa == CpuIsa::Avx2 ? 32 : 16)};
}


int64_t get(const std::map<std::string, int64_t>& b, const char* key, int64_t dflt) {
  auto it = b.find(key);
  return it == b.end() ? dflt : it->second;
}

// Operands are placed far apart (1 TiB each) at 4 KiB-aligned bases, like
// separate large allocations; offsets inside an operand are exact.
constexpr uint64_t kOperandSpacing = uint64_t(1) << 40;
inline uint64_t address(int op, int64_t byte_offset) {
  return uint64_t(op + 1) * kOperandSpacing + uint64_t(byte_offset);
}

// ---------------------------------------------------------------- the cache

struct Cache {
  LevelConfig cfg;
  int64_t sets, ways;
  bool pow2;
  std::vector<uint64_t> tags;  // per set, MRU first; (line << 1) | dirty; kEmpty if unused
  static constexpr uint64_t kEmpty = ~uint64_t(0);

  explicit Cache(const LevelConfig& c) : cfg(c) {
    if (c.size_bytes <= 0 || c.ways <= 0 || c.line_bytes <= 0)
      throw std::invalid_argument("cache level needs positive size, ways and line size");
    if (c.size_bytes % (c.ways * c.line_bytes))
      throw std::invalid_argument("cache size must be a multiple of ways * line size");
    ways = c.ways;
    sets = c.size_bytes / (c.ways * c.line_bytes);
    pow2 = (sets & (sets - 1)) == 0;
    tags.assign(size_t(sets * ways), kEmpty);
  }
  inline uint64_t* set_of(uint64_t line) {
    const uint64_t s = pow2 ? (line & uint64_t(sets - 1)) : (line % uint64_t(sets));
    return tags.data() + s * uint64_t(ways);
  }
  // Returns true on hit. On hit the line moves to MRU (and becomes dirty if
  // `write`). On miss the line is inserted at MRU; `victim` gets the evicted
  // entry (kEmpty if none).
  inline bool access(uint64_t line, bool write, uint64_t& victim) {
    uint64_t* t = set_of(line);
    const uint64_t key = line << 1;
    for (int64_t i = 0; i < ways; ++i) {
      if ((t[i] & ~uint64_t(1)) == key && t[i] != kEmpty) {
        const uint64_t v = t[i] | (write ? 1 : 0);
        std::memmove(t + 1, t, size_t(i) * sizeof(uint64_t));
        t[0] = v;
        return true;
      }
    }
    victim = t[ways - 1];
    std::memmove(t + 1, t, size_t(ways - 1) * sizeof(uint64_t));
    t[0] = key | (write ? 1 : 0);
    return false;
  }
  // Marks a present line dirty without touching LRU order; false if absent.
  inline bool mark_dirty(uint64_t line) {
    uint64_t* t = set_of(line);
    for (int64_t i = 0; i < ways; ++i)
      if (t[i] != kEmpty && (t[i] >> 1) == line) { t[i] |= 1; return true; }
    return false;
  }
};

// Exact LRU stack distance (distinct lines since the last touch of a line):
// a hash map line -> last time, and a Fenwick tree with a 1 at each line's
// last-touch time. Times are compacted when the tree fills.
class ReuseDistance {
 public:
  ReuseDistance() { rehash(1 << 16); bit_.assign(kMinTree + 1, 0); }

  // Distance in lines, or -1 for a first touch.
  int64_t touch(uint64_t line) {
    if (now_ + 1 >= int64_t(bit_.size())) compact();
    const int64_t t = ++now_;
    int64_t& slot = find(line);
    int64_t dist = -1;
    if (slot != 0) {
      dist = prefix(t - 1) - prefix(slot);
      add(slot, -1);
    } else {
      ++live_;
    }
    slot = t;
    add(t, 1);
    if (2 * live_ > int64_t(keys_.size())) grow();
    return dist;
  }

 private:
  static constexpr int64_t kMinTree = 1 << 20;
  static constexpr uint64_t kNoKey = ~uint64_t(0);
  std::vector<uint64_t> keys_;
  std::vector<int64_t> vals_;
  std::vector<int32_t> bit_;
  int64_t now_ = 0, live_ = 0;

  static uint64_t mix(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
  }
  int64_t& find(uint64_t key) {
    const uint64_t mask = keys_.size() - 1;
    uint64_t i = mix(key) & mask;
    while (keys_[i] != kNoKey && keys_[i] != key) i = (i + 1) & mask;
    if (keys_[i] == kNoKey) { keys_[i] = key; vals_[i] = 0; }
    return vals_[i];
  }
  void rehash(size_t cap) {
    std::vector<uint64_t> ok = std::move(keys_);
    std::vector<int64_t> ov = std::move(vals_);
    keys_.assign(cap, kNoKey);
    vals_.assign(cap, 0);
    for (size_t i = 0; i < ok.size(); ++i)
      if (ok[i] != kNoKey) find(ok[i]) = ov[i];
  }
  void grow() { rehash(keys_.size() * 2); }
  void add(int64_t i, int32_t v) {
    for (; i < int64_t(bit_.size()); i += i & -i) bit_[size_t(i)] += v;
  }
  int64_t prefix(int64_t i) const {
    int64_t s = 0;
    for (; i > 0; i -= i & -i) s += bit_[size_t(i)];
    return s;
  }
  // Renumber live last-touch times 1..live in order and rebuild the tree.
  void compact() {
    std::vector<std::pair<int64_t, size_t>> order;
    order.reserve(size_t(live_));
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i] != kNoKey && vals_[i] != 0) order.emplace_back(vals_[i], i);
    std::sort(order.begin(), order.end());
    const int64_t size = std::max<int64_t>(kMinTree, 4 * int64_t(order.size()));
    bit_.assign(size_t(size + 1), 0);
    for (size_t j = 0; j < order.size(); ++j) {
      vals_[order[j].second] = int64_t(j + 1);
      add(int64_t(j + 1), 1);
    }
    now_ = int64_t(order.size());
  }
};

struct Counters {
  std::vector<LevelStats> levels;
  int64_t l1_bytes = 0, accesses = 0, reuse_cold = 0;
  std::vector<int64_t> op_acc, op_l1_miss, op_last_miss, hist;
  explicit Counters(size_t nlev)
      : levels(nlev), op_acc(kNumOperands), op_l1_miss(kNumOperands), op_last_miss(kNumOperands),
        hist(48) {}
};

// Simulates every access; counts only while a work unit is being counted.
// Work units are the kernels' outermost independent iterations. To bound the
// run time, windows of units spread over the whole range are counted: window
// 0 starts cold at unit 0 and is counted as is (it holds the first touches of
// data every unit shares, e.g. the weights); each later window follows a
// warm-up that is simulated but not counted, and stands for all the units
// after window 0. Units outside the windows are still generated, but only
// their accesses are counted (cheap); the windows' cache counts are scaled by
// (accesses of all units after window 0) / (accesses in the later windows),
// a ratio estimator that follows the work of each unit (border rows do less).
// Accesses outside any unit (weight packing) are counted as is.
class SimSink {
 public:
  SimSink(const Options& opt, int64_t units_total)
      : opt_(opt), fixed_(opt.levels.size()), sampled_(opt.levels.size()), first_(opt.levels.size()),
        units_total_(units_total) {
    if (opt.levels.empty()) throw std::invalid_argument("cache hierarchy needs at least one level");
    for (auto& l : opt.levels) caches_.emplace_back(l);
    line_bytes_ = opt.levels[0].line_bytes;
    line_shift_ = 0;
    while ((int64_t(1) << line_shift_) < line_bytes_) ++line_shift_;
    if ((int64_t(1) << line_shift_) != line_bytes_)
      throw std::invalid_argument("cache line size must be a power of two");
    for (auto& l : opt.levels)
      if (l.line_bytes != line_bytes_)
        throw std::invalid_argument("all cache levels must have the same line size");
    cur_ = &fixed_;
  }

  // Called at the start of work unit u; false = skip the unit entirely.
  bool unit(int64_t u) {
    if (u == 0) {
      cur_ = &first_;
      counted_first_ = 1;
      return true;
    }
    if (!plan_ready_) {
      // Decide after unit 0, from its access count.
      plan_ready_ = true;
      const int64_t per_unit = std::max<int64_t>(1, first_.accesses);
      if (opt_.sample_accesses <= 0 || per_unit * units_total_ <= opt_.sample_accesses || units_total_ < 4) {
        full_ = true;
      } else {
        const int64_t budget_units = std::max<int64_t>(2, opt_.sample_accesses / per_unit);
        windows_ = std::min<int64_t>(8, budget_units);
        window_ = std::max<int64_t>(1, budget_units / windows_);
        period_ = units_total_ / windows_;
        window_ = std::min(window_, period_ / 2 > 0 ? period_ / 2 : 1);
        warm_ = std::min(std::max<int64_t>(1, window_ / 2), period_ - window_);
      }
    }
    if (full_) {
      cur_ = &first_;
      ++counted_first_;
      return true;
    }
    // Window i counts units [i*period + warm, i*period + warm + window) after
    // warming on [i*period, i*period + warm); window 0 is [0, window), cold.
    const int64_t i = u / period_, off = u - i * period_;
    const int64_t w = i == 0 ? 0 : warm_;
    count_only_ = false;
    if (i >= windows_ || off >= w + window_) { cur_ = nullptr; count_only_ = true; return true; }
    if (off < w) { cur_ = nullptr; return true; }  // warm-up: simulate, don't count
    if (i == 0) { cur_ = &first_; ++counted_first_; }
    else { cur_ = &sampled_; ++counted_rest_; }
    return true;
  }
  void end_units() { cur_ = &fixed_; count_only_ = false; }

  // An AVX masked load or store (vmaskmovps), which valgrind does not see.
  inline void access_masked(int op, int64_t elem_offset, int64_t elem_size, int64_t nbytes, bool write) {
    if (!opt_.skip_masked) access(op, elem_offset, elem_size, nbytes, write);
  }

  inline void access(int op, int64_t elem_offset, int64_t elem_size, int64_t nbytes, bool write) {
    if (cur_ != &fixed_ && cur_ != &first_) { rest_accesses_++; rest_l1_bytes_ += nbytes; rest_op_acc_[size_t(op)]++; }
    if (count_only_) return;
    const uint64_t a = address(op, elem_offset * elem_size);
    const uint64_t first = a >> line_shift_, last = (a + uint64_t(nbytes) - 1) >> line_shift_;
    Counters* c = cur_;
    if (c) { c->accesses++; c->l1_bytes += nbytes; c->op_acc[size_t(op)]++; }
    for (uint64_t line = first; line <= last; ++line) {
      if (opt_.reuse_histogram) {
        const int64_t d = rd_.touch(line);
        if (c) {
          if (d < 0) c->reuse_cold++;
          else c->hist[size_t(d == 0 ? 0 : 64 - __builtin_clzll(uint64_t(d)))]++;
        }
      }
      for (size_t lv = 0; lv < caches_.size(); ++lv) {
        uint64_t victim = Cache::kEmpty;
        const bool hit = caches_[lv].access(line, write && lv == 0, victim);
        if (victim != Cache::kEmpty && (victim & 1)) writeback(lv, victim >> 1, c);
        if (c) {
          auto& s = c->levels[lv];
          s.accesses++;
          if (hit) s.hits++; else s.misses++;
          if (!hit && lv == 0) c->op_l1_miss[size_t(op)]++;
          if (!hit && lv + 1 == caches_.size()) c->op_last_miss[size_t(op)]++;
        }
        if (hit) break;
      }
    }
  }

  Result result() const {
    Result r;
    // fixed_ and first_ as counted; sampled_ stands for every unit after window 0.
    const double scale = full_ || sampled_.accesses == 0 ? 1.0 : double(rest_accesses_) / double(sampled_.accesses);
    auto sc = [&](int64_t f, int64_t s) { return f + int64_t(double(s) * scale + 0.5); };
    Counters fixed(caches_.size());
    add(fixed, fixed_);
    add(fixed, first_);
    r.levels.resize(caches_.size());
    for (size_t i = 0; i < caches_.size(); ++i) {
      const auto &f = fixed.levels[i], &s = sampled_.levels[i];
      r.levels[i].accesses = sc(f.accesses, s.accesses);
      r.levels[i].hits = sc(f.hits, s.hits);
      r.levels[i].misses = sc(f.misses, s.misses);
      r.levels[i].writebacks = sc(f.writebacks, s.writebacks);
    }
    // Access counts are exact: every unit was generated.
    r.l1_bytes = fixed.l1_bytes + (full_ ? sampled_.l1_bytes : rest_l1_bytes_);
    r.accesses = fixed.accesses + (full_ ? sampled_.accesses : rest_accesses_);
    for (int op = 0; op < kNumOperands; ++op) {
      r.operand_accesses.push_back(fixed.op_acc[size_t(op)] + (full_ ? sampled_.op_acc[size_t(op)] : rest_op_acc_[size_t(op)]));
      r.operand_l1_misses.push_back(sc(fixed.op_l1_miss[size_t(op)], sampled_.op_l1_miss[size_t(op)]));
      r.operand_last_misses.push_back(sc(fixed.op_last_miss[size_t(op)], sampled_.op_last_miss[size_t(op)]));
    }
    if (opt_.reuse_histogram) {
      for (size_t b = 0; b < fixed.hist.size(); ++b) r.reuse_hist.push_back(sc(fixed.hist[b], sampled_.hist[b]));
      while (!r.reuse_hist.empty() && r.reuse_hist.back() == 0) r.reuse_hist.pop_back();
      r.reuse_cold = sc(fixed.reuse_cold, sampled_.reuse_cold);
    }
    r.units_total = units_total_;
    r.units_counted = full_ ? units_total_ : counted_first_ + counted_rest_;
    r.scale = scale;
    return r;
  }

 private:
  static void add(Counters& a, const Counters& b) {
    for (size_t i = 0; i < a.levels.size(); ++i) {
      a.levels[i].accesses += b.levels[i].accesses; a.levels[i].hits += b.levels[i].hits;
      a.levels[i].misses += b.levels[i].misses; a.levels[i].writebacks += b.levels[i].writebacks;
    }
    a.l1_bytes += b.l1_bytes; a.accesses += b.accesses; a.reuse_cold += b.reuse_cold;
    for (size_t i = 0; i < a.op_acc.size(); ++i) {
      a.op_acc[i] += b.op_acc[i]; a.op_l1_miss[i] += b.op_l1_miss[i]; a.op_last_miss[i] += b.op_last_miss[i];
    }
    for (size_t i = 0; i < a.hist.size(); ++i) a.hist[i] += b.hist[i];
  }
  void writeback(size_t lv, uint64_t line, Counters* c) {
    if (c) c->levels[lv].writebacks++;
    if (lv + 1 >= caches_.size()) return;  // to memory
    if (caches_[lv + 1].mark_dirty(line)) return;
    uint64_t victim = Cache::kEmpty;
    caches_[lv + 1].access(line, true, victim);  // allocate the written-back line
    if (victim != Cache::kEmpty && (victim & 1)) writeback(lv + 1, victim >> 1, c);
  }

  const Options& opt_;
  std::vector<Cache> caches_;
  ReuseDistance rd_;
  Counters fixed_, sampled_, first_;
  Counters* cur_;
  int64_t line_bytes_, line_shift_;
  int64_t units_total_, counted_first_ = 0, counted_rest_ = 0;
  int64_t rest_accesses_ = 0, rest_l1_bytes_ = 0;
  std::vector<int64_t> rest_op_acc_ = std::vector<int64_t>(kNumOperands);
  bool count_only_ = false;
  bool plan_ready_ = false, full_ = false;
  int64_t windows_ = 1, window_ = 1, warm_ = 0, period_ = 1;
};

// Records the accesses of a range of units (for the access-pattern pictures).
class RecordSink {
 public:
  // Accesses before the first unit (weight packing) belong to the range starting at 0.
  RecordSink(int64_t u0, int64_t u1, int64_t max) : u0_(u0), u1_(u1), max_(max), on_(u0 == 0) {}
  bool unit(int64_t u) { on_ = u >= u0_ && u < u1_; return on_ && int64_t(rows.size()) < max_; }
  void end_units() { on_ = false; }
  inline void access(int op, int64_t elem_offset, int64_t elem_size, int64_t nbytes, bool write) {
    if (on_ && int64_t(rows.size()) < max_) rows.push_back({op, elem_offset * elem_size, nbytes, write ? 1 : 0});
  }
  inline void access_masked(int op, int64_t elem_offset, int64_t elem_size, int64_t nbytes, bool write) {
    access(op, elem_offset, elem_size, nbytes, write);
  }
  std::vector<std::vector<int64_t>> rows;

 private:
  int64_t u0_, u1_, max_;
  bool on_;
};

// ------------------------------------------------------------ loop nests

struct Layout {
  const Geometry& g;
  int64_t Ho, Wo;
  explicit Layout(const Geometry& geo) : g(geo), Ho(geo.Ho()), Wo(geo.Wo()) {}
  int64_t in(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return g.nhwc ? ((n * g.H + h) * g.W + w) * g.C + c : ((n * g.C + c) * g.H + h) * g.W + w;
  }
  int64_t out(int64_t n, int64_t k, int64_t h, int64_t w) const {
    return g.nhwc ? ((n * Ho + h) * Wo + w) * g.K + k : ((n * g.K + k) * Ho + h) * Wo + w;
  }
  // The user's weight [K][Cg][R][S], channels_last ([K][R][S][Cg]) with NHWC.
  int64_t wt(int64_t k, int64_t c, int64_t r, int64_t s) const {
    return g.nhwc ? ((k * g.R + r) * g.S + s) * g.Cg() + c : ((k * g.Cg() + c) * g.R + r) * g.S + s;
  }
};

// Emits a contiguous run of `count` elements as vector accesses.
template <class Sink>
inline void emit_run(Sink& sink, int64_t vb, int op, int64_t off, int64_t count, int64_t e, bool write) {
  const int64_t per = std::max<int64_t>(1, vb / e);
  for (int64_t i = 0; i < count; i += per)
    sink.access(op, off + i, e, std::min(per, count - i) * e, write);
}

// Phase q of input row `row` (its offset) copied into a depthwise row buffer at `dst`:
// the columns q, q + sw, ... of the padded row, Lq of them, zeros where out of bounds.
template <class Sink>
void emit_row_phase(Sink& sink, const Geometry& g, int64_t vb, int64_t row, int64_t q, int64_t dst,
                    int64_t Lq, int64_t e) {
  const int64_t j0 = std::min(Lq, std::max<int64_t>(0, ceil_div(g.pl - q, g.sw)));
  const int64_t j1 = std::min(Lq, std::max(j0, floor_div(g.W - 1 + g.pl - q, g.sw) + 1));
  if (j0 > 0) emit_run(sink, vb, kColumn, dst, j0, e, true);
  const int64_t src = row + q - g.pl;
  if (g.sw == 1) {
    emit_run(sink, vb, kInput, src + j0, j1 - j0, e, false);
    emit_run(sink, vb, kColumn, dst + j0, j1 - j0, e, true);
  } else {
    for (int64_t j = j0; j < j1; ++j) {
      sink.access(kInput, src + g.sw * j, e, e, false);
      sink.access(kColumn, dst + j, e, e, true);
    }
  }
  if (j1 < Lq) emit_run(sink, vb, kColumn, dst + j1, Lq - j1, e, true);
}

// reference.cpp: n, k, oh, ow, c, r, s; one scalar load of input and weight
// per tap inside the image, one store per output. Units: (n, k).
template <class Sink>
void run_reference(Sink& sink, const Geometry& g) {
  const Layout L(g);
  const int64_t e = g.elem, Cg = g.Cg(), Kg = g.Kg();
  for (int64_t nk = 0; nk < g.N * g.K; ++nk) {
    if (!sink.unit(nk)) continue;
    const int64_t n = nk / g.K, k = nk % g.K, grp = k / Kg;
    for (int64_t oh = 0; oh < L.Ho; ++oh)
      for (int64_t ow = 0; ow < L.Wo; ++ow) {
        for (int64_t c = 0; c < Cg; ++c)
          for (int64_t r = 0; r < g.R; ++r) {
            const int64_t ih = oh * g.sh - g.pt + r * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t iw = ow * g.sw - g.pl + s * g.dw;
              if (iw < 0 || iw >= g.W) continue;
              sink.access(kInput, L.in(n, grp * Cg + c, ih, iw), e, e, false);
              sink.access(kWeight, L.wt(k, c, r, s), e, e, false);
            }
          }
        sink.access(kOutput, L.out(n, k, oh, ow), e, e, true);
      }
  }
  sink.end_units();
}

// Goto/BLIS GEMM C[M x N] (+)= A[M x K] B[K x N]; A, B, C given by element
// offset functions. Packs B into a KC x NC panel (NR-wide micro-panels) and A
// into an MC x KC block (MR-tall micro-panels); the micro-kernel per k loads
// NR elements of packed B as vectors and broadcasts MR elements of packed A.
struct GemmBlocking { int64_t MR, NR, MC, KC, NC, vb; };

template <class Sink, class FA, class FB, class FC>
void gemm(Sink& sink, const GemmBlocking& gb, int64_t M, int64_t N, int64_t K, int64_t e,
          int opA, FA a_off, int opB, FB b_off, FC c_off, bool a_contig_m, bool b_contig_n) {
  const int64_t vb = gb.vb;
  for (int64_t jc = 0; jc < N; jc += gb.NC) {
    const int64_t nc = std::min(gb.NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += gb.KC) {
      const int64_t kc = std::min(gb.KC, K - pc);
      // Pack B: micro-panel by micro-panel, row k by row k.
      for (int64_t jr = 0; jr < nc; jr += gb.NR) {
        const int64_t nr = std::min(gb.NR, nc - jr);
        for (int64_t k = 0; k < kc; ++k) {
          if (b_contig_n) emit_run(sink, vb, opB, b_off(pc + k, jc + jr), nr, e, false);
          else for (int64_t j = 0; j < nr; ++j) sink.access(opB, b_off(pc + k, jc + jr + j), e, e, false);
          emit_run(sink, vb, kPackB, (jr * kc) + k * gb.NR, gb.NR, e, true);
        }
      }
      for (int64_t ic = 0; ic < M; ic += gb.MC) {
        const int64_t mc = std::min(gb.MC, M - ic);
        for (int64_t ir = 0; ir < mc; ir += gb.MR) {
          const int64_t mr = std::min(gb.MR, mc - ir);
          for (int64_t k = 0; k < kc; ++k) {
            if (a_contig_m) emit_run(sink, vb, opA, a_off(ic + ir, pc + k), mr, e, false);
            else for (int64_t i = 0; i < mr; ++i) sink.access(opA, a_off(ic + ir + i, pc + k), e, e, false);
            emit_run(sink, vb, kPackA, ir * kc + k * gb.MR, gb.MR, e, true);
          }
        }
        for (int64_t jr = 0; jr < nc; jr += gb.NR) {
          const int64_t nr = std::min(gb.NR, nc - jr);
          for (int64_t ir = 0; ir < mc; ir += gb.MR) {
            const int64_t mr = std::min(gb.MR, mc - ir);
            for (int64_t k = 0; k < kc; ++k) {
              emit_run(sink, vb, kPackB, jr * kc + k * gb.NR, gb.NR, e, false);
              for (int64_t i = 0; i < gb.MR; ++i) sink.access(kPackA, ir * kc + k * gb.MR + i, e, e, false);
            }
            // C tile: read-modify-write after the first KC block, write before.
            for (int64_t i = 0; i < mr; ++i) {
              if (pc > 0) emit_run(sink, vb, kOutput, c_off(ic + ir + i, jc + jr), nr, e, false);
              emit_run(sink, vb, kOutput, c_off(ic + ir + i, jc + jr), nr, e, true);
            }
          }
        }
      }
    }
  }
}

// The "no-copy" GEMM: MKL's sgemm, which ATen calls, runs its
// mkl_blas_avx2_sgemm_kernel_nocopy_* kernels at the sizes im2col's items
// have (seen in callgrind): no packing. Modelled as: per KC block of k, per
// NR columns, per MR rows: C tile (read after the first KC block), then per k
// MR scalar loads of A and NR elements of B (vectors when contiguous), then
// the C tile stored.
template <class Sink, class FA, class FB, class FC>
void gemm_nocopy(Sink& sink, const GemmBlocking& gb, int64_t M, int64_t N, int64_t K, int64_t e, int opA,
                 FA a_off, int opB, FB b_off, FC c_off, bool b_contig_n) {
  const int64_t vb = gb.vb;
  for (int64_t pc = 0; pc < K; pc += gb.KC) {
    const int64_t kc = std::min(gb.KC, K - pc);
    for (int64_t jr = 0; jr < N; jr += gb.NR) {
      const int64_t nr = std::min(gb.NR, N - jr);
      for (int64_t ir = 0; ir < M; ir += gb.MR) {
        const int64_t mr = std::min(gb.MR, M - ir);
        if (pc > 0)
          for (int64_t i = 0; i < mr; ++i) emit_run(sink, vb, kOutput, c_off(ir + i, jr), nr, e, false);
        for (int64_t k = pc; k < pc + kc; ++k) {
          for (int64_t i = 0; i < mr; ++i) sink.access(opA, a_off(ir + i, k), e, e, false);
          if (b_contig_n) emit_run(sink, vb, opB, b_off(k, jr), nr, e, false);
          else for (int64_t j = 0; j < nr; ++j) sink.access(opB, b_off(k, jr + j), e, e, false);
        }
        for (int64_t i = 0; i < mr; ++i) emit_run(sink, vb, kOutput, c_off(ir + i, jr), nr, e, true);
      }
    }
  }
}

struct Im2colPlan { int64_t tile, kdim, kall, tiles, total; bool direct_gemm; };

// im2col.cpp's make_tiling: the column buffer holds every group's rows
// (C*R*S per pixel); tiles are equalised so there is no sliver.
Im2colPlan im2col_plan(const Geometry& g, const std::map<std::string, int64_t>& b) {
  const Layout L(g);
  Im2colPlan p;
  p.kdim = g.Cg() * g.R * g.S;
  p.kall = g.C * g.R * g.S;
  p.total = g.N * L.Ho * L.Wo;
  const int64_t max_ws = get(b, "im2col_max_workspace_bytes", blocking::kIm2colMaxWorkspaceBytes);
  const int64_t min_tile = get(b, "im2col_min_tile_pixels", blocking::kIm2colMinTilePixels);
  // A 1x1, stride-1, unpadded conv is already a GEMM: no column buffer, one tile.
  p.direct_gemm = g.R == 1 && g.S == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pb == 0 &&
                  g.pl == 0 && g.pr == 0;
  if (p.direct_gemm) {
    p.tile = p.total;
    p.tiles = p.total > 0 ? 1 : 0;
    return p;
  }
  int64_t tile = std::min(p.total, std::max(min_tile, max_ws / std::max<int64_t>(1, p.kall * g.elem)));
  const int64_t count = (p.total + tile - 1) / tile;
  p.tile = (p.total + count - 1) / count;
  p.tiles = (p.total + p.tile - 1) / p.tile;
  return p;
}

// im2col.cpp (forward): per tile of P output pixels over flattened (n, oh, ow):
// build the column buffer for all groups (NCHW: col[(ci, r, s)][P], one
// output-row run at a time, zeros for padding; NHWC: col[p][(g, r, s, c)]);
// then one BLAS GEMM per work item: NCHW items are (group, block of
// `im2col_item_channels` output channels, image segment, block of
// `im2col_item_pixels` pixels) computing out = W_g x col; NHWC items are
// (group, block of pixels, block of channels) computing out = col x W_g^T;
// each GEMM writes its block of the output in place. Units: tiles.
template <class Sink>
void run_im2col(Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  const Layout L(g);
  const int64_t vb = nest.vb;
  const auto plan = im2col_plan(g, b);
  const int64_t e = g.elem, Cg = g.Cg(), Kg = g.Kg(), HWo = L.Ho * L.Wo;
  const int64_t Kd = plan.kdim, kall = plan.kall;
  const int64_t item_ch = get(b, "im2col_item_channels", blocking::kIm2colItemChannels);
  const int64_t item_ch_nhwc =
      get(b, "im2col_nhwc_item_channels", blocking::kIm2colNhwcItemChannels);
  const int64_t item_px = get(b, "im2col_item_pixels", blocking::kIm2colItemPixels);
  const int64_t item_min_macs = get(b, "im2col_item_min_macs", blocking::kIm2colItemMinMacs);
  // Cuts [0, n) into ceil(n / max_block) nearly equal blocks.
  auto even_block = [](int64_t n, int64_t max_block) {
    return n <= 0 ? int64_t(1) : ceil_div(n, ceil_div(n, std::max<int64_t>(1, max_block)));
  };
  const GemmBlocking gb{get(b, "gemm_mr", blocking::kGemmMR), get(b, "gemm_nr", blocking::kGemmNR),
                        get(b, "gemm_mc", blocking::kGemmMC), get(b, "gemm_kc", blocking::kGemmKC),
                        get(b, "gemm_nc", blocking::kGemmNC), vb};
  const bool pack = get(b, "gemm_pack", blocking::kGemmPack) != 0;
  // One GEMM call: Goto with packing, or MKL's no-copy kernels.
  auto call = [&](int64_t M, int64_t N, int64_t K, int opA, auto a_off, int opB, auto b_off, auto c_off,
                  bool b_contig_n) {
    if (pack) gemm(sink, gb, M, N, K, e, opA, a_off, opB, b_off, c_off, false, b_contig_n);
    else gemm_nocopy(sink, gb, M, N, K, e, opA, a_off, opB, b_off, c_off, b_contig_n);
  };
  for (int64_t t = 0; t < plan.tiles; ++t) {
    if (!sink.unit(t)) continue;
    const int64_t p0 = t * plan.tile, p1 = std::min(plan.total, p0 + plan.tile), P = p1 - p0;
    // Segments: the tile's pixels split at image boundaries.
    struct Seg { int64_t n, q, len, off; };
    std::vector<Seg> segs;
    for (int64_t i = p0; i < p1;) {
      const int64_t n = i / HWo, q = i % HWo, len = std::min(p1 - i, HWo - q);
      segs.push_back({n, q, len, i - p0});
      i += len;
    }
    auto pix = [&](int64_t p, int64_t& n, int64_t& oh, int64_t& ow) {
      n = p / HWo; const int64_t hw = p % HWo; oh = hw / L.Wo; ow = hw % L.Wo;
    };
    if (!g.nhwc) {
      if (!plan.direct_gemm) {
        for (int64_t ci = 0; ci < g.C; ++ci)
          for (int64_t r = 0; r < g.R; ++r)
            for (int64_t s = 0; s < g.S; ++s) {
              const int64_t dst = ((ci * g.R + r) * g.S + s) * P;
              const int64_t off_w = s * g.dw - g.pl;
              // Output columns whose input column is inside the image.
              int64_t lo = off_w >= 0 ? 0 : (-off_w + g.sw - 1) / g.sw;
              int64_t hi = g.W - off_w <= 0 ? 0 : (g.W - off_w + g.sw - 1) / g.sw;
              lo = std::min(lo, L.Wo);
              hi = std::min(std::max(hi, lo), L.Wo);
              for (const auto& sg : segs) {
                int64_t q = sg.q, off = sg.off;
                while (q < sg.q + sg.len) {
                  const int64_t oh = q / L.Wo, ow0 = q % L.Wo, len = std::min(L.Wo - ow0, sg.q + sg.len - q);
                  const int64_t d = dst + off, ow1 = ow0 + len;
                  const int64_t ih = oh * g.sh - g.pt + r * g.dh;
                  if (ih < 0 || ih >= g.H) {
                    emit_run(sink, vb, kColumn, d, len, e, true);
                  } else {
                    const int64_t a = std::min(std::max(lo, ow0), ow1), bb = std::min(std::max(hi, a), ow1);
                    if (a > ow0) emit_run(sink, vb, kColumn, d, a - ow0, e, true);
                    if (bb > a) {
                      if (g.sw == 1) {
                        emit_run(sink, vb, kInput, L.in(sg.n, ci, ih, a + off_w), bb - a, e, false);
                        emit_run(sink, vb, kColumn, d + (a - ow0), bb - a, e, true);
                      } else {
                        for (int64_t ow = a; ow < bb; ++ow) {
                          sink.access(kInput, L.in(sg.n, ci, ih, ow * g.sw + off_w), e, e, false);
                          sink.access(kColumn, d + (ow - ow0), e, e, true);
                        }
                      }
                    }
                    if (ow1 > bb) emit_run(sink, vb, kColumn, d + (bb - ow0), ow1 - bb, e, true);
                  }
                  q += len;
                  off += len;
                }
              }
            }
      }
      // make_items: balanced blocks; the inner (pixel) block grows until an
      // item holds im2col_item_min_macs. 1x1 stride 1 (pointwise_nchw_items):
      // whole planes by channel blocks, a layer of one item cut in two.
      int64_t mblock = item_ch, pblock = item_px;
      if (plan.direct_gemm) {
        mblock = get(b, "im2col_pointwise_item_channels", blocking::kIm2colPointwiseItemChannels);
        pblock = HWo;
        if (g.N * g.groups * ceil_div(Kg, mblock) < 2) {
          if (Kg >= get(b, "im2col_pointwise_split_channels", blocking::kIm2colPointwiseSplitChannels))
            mblock = ceil_div(Kg, 2);
          else
            pblock = ceil_div(HWo, 2);
        }
      }
      const int64_t mb = even_block(Kg, mblock);
      const int64_t min_c = ceil_div(item_min_macs, std::max<int64_t>(1, mb * Kd));
      for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t m0 = 0; m0 < Kg; m0 += mb) {
          const int64_t mn = std::min(mb, Kg - m0), k = grp * Kg + m0;
          for (const auto& sg : segs) {
            const int64_t cb = even_block(sg.len, std::max(pblock, min_c));
            for (int64_t c0 = 0; c0 < sg.len; c0 += cb) {
              const int64_t cn = std::min(cb, sg.len - c0);
              auto a_off = [&](int64_t i, int64_t kk) { return (k + i) * Kd + kk; };
              auto c_off = [&](int64_t i, int64_t j) { return L.out(sg.n, k + i, 0, 0) + sg.q + c0 + j; };
              if (plan.direct_gemm) {
                auto b_off = [&](int64_t kk, int64_t j) { return L.in(sg.n, grp * Cg + kk, 0, 0) + sg.q + c0 + j; };
                call(mn, cn, Kd, kWeight, a_off, kInput, b_off, c_off, true);
              } else {
                auto b_off = [&](int64_t kk, int64_t j) { return (grp * Kd + kk) * P + sg.off + c0 + j; };
                call(mn, cn, Kd, kWeight, a_off, kColumn, b_off, c_off, true);
              }
            }
          }
        }
    } else {
      if (!plan.direct_gemm) {
        // One group, no horizontal dilation: a kernel row's taps are one run.
        const bool merge = g.groups == 1 && g.dw == 1;
        for (int64_t i = p0; i < p1; ++i) {
          int64_t n, oh, ow; pix(i, n, oh, ow);
          const int64_t d = (i - p0) * kall;
          for (int64_t grp = 0; grp < g.groups; ++grp)
            for (int64_t r = 0; r < g.R; ++r) {
              const int64_t dr = d + (grp * g.R + r) * g.S * Cg;
              const int64_t ih = oh * g.sh - g.pt + r * g.dh;
              if (ih < 0 || ih >= g.H) { emit_run(sink, vb, kColumn, dr, g.S * Cg, e, true); continue; }
              const int64_t iw0 = ow * g.sw - g.pl;
              const int64_t s0 = std::min(g.S, iw0 >= 0 ? 0 : ceil_div(-iw0, g.dw));
              const int64_t s1 = std::max(s0, std::min(g.S, g.W - iw0 <= 0 ? 0 : ceil_div(g.W - iw0, g.dw)));
              if (s0 > 0) emit_run(sink, vb, kColumn, dr, s0 * Cg, e, true);
              if (merge) {
                if (s1 > s0) {
                  emit_run(sink, vb, kInput, L.in(n, 0, ih, iw0 + s0), (s1 - s0) * Cg, e, false);
                  emit_run(sink, vb, kColumn, dr + s0 * Cg, (s1 - s0) * Cg, e, true);
                }
              } else {
                for (int64_t s = s0; s < s1; ++s) {
                  emit_run(sink, vb, kInput, L.in(n, grp * Cg, ih, iw0 + s * g.dw), Cg, e, false);
                  emit_run(sink, vb, kColumn, dr + s * Cg, Cg, e, true);
                }
              }
              if (s1 < g.S) emit_run(sink, vb, kColumn, dr + s1 * Cg, (g.S - s1) * Cg, e, true);
            }
        }
      }
      const int64_t mb = even_block(P, item_px);
      const int64_t min_c = ceil_div(item_min_macs, std::max<int64_t>(1, mb * Kd));
      const int64_t cb = even_block(Kg, std::max(item_ch_nhwc, min_c));
      for (int64_t grp = 0; grp < g.groups; ++grp)
        for (int64_t m0 = 0; m0 < P; m0 += mb) {
          const int64_t mn = std::min(mb, P - m0);
          for (int64_t c0 = 0; c0 < Kg; c0 += cb) {
            const int64_t cn = std::min(cb, Kg - c0), k = grp * Kg + c0, px = p0 + m0;
            auto b_off = [&](int64_t kk, int64_t j) { return (k + j) * Kd + kk; };
            auto c_off = [&](int64_t i, int64_t j) { return (px + i) * g.K + k + j; };
            if (plan.direct_gemm) {
              auto a_off = [&](int64_t i, int64_t kk) { return (px + i) * g.C + grp * Cg + kk; };
              call(mn, cn, Kd, kInput, a_off, kWeight, b_off, c_off, false);
            } else {
              auto a_off = [&](int64_t i, int64_t kk) { return (m0 + i) * kall + grp * Kd + kk; };
              call(mn, cn, Kd, kColumn, a_off, kWeight, b_off, c_off, false);
            }
          }
        }
    }
  }
  sink.end_units();
}

struct DirectPlan { int64_t vec, vectors, tile, row_block, oc_blocks, oc_tiles, row_blocks, cin_block; };

DirectPlan direct_plan(const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  DirectPlan p;
  // direct_pack_block: with AVX-512, groups of more than 8 output channels are
  // packed 16 channels innermost (a zmm) and run the AVX-512 tiles.
  const int64_t v8 = get(b, "direct_oc_block", blocking::kDirectOcBlock);
  const bool zmm = nest.isa == CpuIsa::Avx512 && g.Kg() > v8;
  p.vec = zmm ? get(b, "direct_avx512_oc_block", blocking::kDirectAvx512OcBlock) : v8;
  p.oc_blocks = (g.Kg() + p.vec - 1) / p.vec;
  if (p.oc_blocks == 1) {
    p.vectors = 1;
    p.tile = zmm ? get(b, "direct_avx512_pixel_tile_single", blocking::kDirectAvx512PixelTileSingle)
                 : get(b, "direct_pixel_tile_single", blocking::kDirectPixelTileSingle);
  } else {
    p.vectors = get(b, "direct_oc_vectors", blocking::kDirectOcVectors);
    p.tile = zmm ? get(b, "direct_avx512_pixel_tile", blocking::kDirectAvx512PixelTile)
                 : get(b, "direct_pixel_tile", blocking::kDirectPixelTile);
  }
  p.oc_tiles = (p.oc_blocks + p.vectors - 1) / p.vectors;
  p.row_block = get(b, "direct_row_block", blocking::kDirectRowBlock);
  p.row_blocks = (g.Ho() + p.row_block - 1) / p.row_block;
  // Input-channel blocks whose packed weights (x R x S x vectors x 8) fit the budget.
  const int64_t budget = get(b, "direct_cin_block_bytes", blocking::kDirectCinBlockBytes);
  p.cin_block = std::max<int64_t>(1, budget / (g.R * g.S * p.vectors * p.vec * g.elem));
  return p;
}

// direct_blocked_avx512.cpp: float32 on AVX-512 when every lane of a tile is an
// output channel: dense layers and wide groups (Cg, Kg multiples of 16), or
// narrow groups (Cg == Kg in {2, 4, 8}) packed gpv = 16 / Kg groups per vector.
struct BlockedPlan { int64_t lanes, gpv, ocv, GB, CB, PS, OB, Hp, Wp, RB, row_block, tile, cin_block, pass; };

bool direct_blocked_applies(const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  if (nest.isa != CpuIsa::Avx512 || g.elem != 4) return false;
  const int64_t lanes = get(b, "direct_avx512_oc_block", blocking::kDirectAvx512OcBlock);
  const int64_t kg = g.Kg(), cg = g.Cg();
  const bool narrow = g.groups > 1 && kg == cg && (kg == 2 || kg == 4 || kg == 8) && g.groups % (lanes / kg) == 0;
  return narrow || (cg % lanes == 0 && kg % lanes == 0);
}

BlockedPlan blocked_plan(const Geometry& g, const std::map<std::string, int64_t>& b) {
  BlockedPlan p;
  p.lanes = get(b, "direct_avx512_oc_block", blocking::kDirectAvx512OcBlock);
  const int64_t kg = g.Kg();
  p.gpv = kg < p.lanes ? p.lanes / kg : 1;
  p.ocv = p.gpv == 1 && kg % (2 * p.lanes) == 0 ? 2 : 1;
  p.GB = g.groups / p.gpv;
  p.CB = g.Cg() * p.gpv;
  // A pixel of a multiple of 4 lines gets one line more (kDirectBlockedAvx512PixelPad).
  p.PS = p.CB % (4 * p.lanes) ? p.CB
         : p.CB + get(b, "direct_blocked_avx512_pixel_pad", blocking::kDirectBlockedAvx512PixelPad);
  p.OB = kg * p.gpv / (p.lanes * p.ocv);
  p.Hp = g.H + g.pt + g.pb;
  p.Wp = g.W + g.pl + g.pr;
  // Near-equal row blocks of at most direct_blocked_avx512_row_block rows, one more
  // where the tasks (N x GB x blocks) would be odd.
  const int64_t rb_max = get(b, "direct_blocked_avx512_row_block", blocking::kDirectBlockedAvx512RowBlock);
  int64_t blocks = ceil_div(g.Ho(), rb_max);
  if (g.N * p.GB * blocks % 2 && blocks < g.Ho()) ++blocks;
  p.row_block = ceil_div(g.Ho(), blocks);
  p.RB = ceil_div(g.Ho(), p.row_block);
  p.cin_block = std::min(g.Cg(), get(b, "direct_blocked_avx512_cin_block", blocking::kDirectBlockedAvx512CinBlock));
  // Channels per pass: whole blocks whose weights fit direct_blocked_avx512_panel_bytes.
  const int64_t per_channel = g.R * g.S * p.ocv * p.lanes * 4;
  const int64_t panel = get(b, "direct_blocked_avx512_panel_bytes", blocking::kDirectBlockedAvx512PanelBytes);
  p.pass = std::min(g.Cg(), std::max<int64_t>(1, panel / per_channel / p.cin_block) * p.cin_block);
  p.tile = p.ocv == 1 ? get(b, "direct_blocked_avx512_pixel_tile", blocking::kDirectBlockedAvx512PixelTile)
                      : get(b, "direct_blocked_avx512_pixel_tile_pair", blocking::kDirectBlockedAvx512PixelTilePair);
  return p;
}

// The blocked nest: the input copied once into xt[N][GB][Hp][Wp][PS] (operand
// "column": CB floats per pixel, zero rows and columns for the padding; NHWC a
// vector load per 16 channels, NCHW a gather of 16 planes), the weights packed
// to [GB][OB][Cg/cin_block][R][S][cin_block][OCV][16]; tasks (n, group block,
// output block, block of `row_block` rows) run passes of `pass` input channels
// over their rows: rows split into near-equal tiles of at most `tile` pixels
// (two rows a tile where a row is at most half of one); a tile loads its
// partial sums (operand "scratch", one slot per tile of the task; not in the
// first pass), runs (channel block, r, s, c in the block): OCV weight vectors,
// one broadcast of gpv floats per pixel, and stores them; after the last pass
// per vector and pixel a store (NHWC) or a 16-lane scatter (NCHW). Units: tasks.
template <class Sink>
void run_direct_blocked(Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  const Layout L(g);
  const auto P = blocked_plan(g, b);
  const int64_t e = g.elem, Cg = g.Cg(), Kg = g.Kg(), lanes = P.lanes, chunks = P.CB / lanes;
  (void)nest;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t gb = 0; gb < P.GB; ++gb)
      for (int64_t hp = 0; hp < P.Hp; ++hp) {
        const int64_t ih = hp - g.pt;
        for (int64_t wp = 0; wp < P.Wp; ++wp)
          for (int64_t q = 0; q < chunks; ++q) {
            const int64_t o = (((n * P.GB + gb) * P.Hp + hp) * P.Wp + wp) * P.PS + q * lanes;
            const int64_t iw = wp - g.pl;
            if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) {
              if (g.nhwc) {
                sink.access(kInput, L.in(n, gb * P.CB + q * lanes, ih, iw), e, lanes * e, false);
              } else {
                for (int64_t j = 0; j < lanes; ++j) {  // lane j = c * gpv + gl
                  const int64_t c = q * lanes / P.gpv + j / P.gpv, gl = j % P.gpv;
                  sink.access(kInput, L.in(n, gb * P.CB + gl * Cg + c, ih, iw), e, e, false);
                }
              }
            }
            sink.access(kColumn, o, e, lanes * e, true);
          }
      }
  const int64_t cbn = P.cin_block;
  int64_t pw = 0;
  for (int64_t gb = 0; gb < P.GB; ++gb)
    for (int64_t ob = 0; ob < P.OB; ++ob)
      for (int64_t cb = 0; cb < Cg; cb += cbn)
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s)
            for (int64_t c = cb; c < cb + cbn; ++c)
              for (int64_t v = 0; v < P.ocv; ++v)
                for (int64_t l = 0; l < lanes; ++l, ++pw) {
                  const int64_t lc = P.gpv == 1 ? l : (l % P.gpv) * (lanes / P.gpv) + l / P.gpv;
                  const int64_t k = gb * Kg * P.gpv + (ob * P.ocv + v) * lanes + lc;
                  sink.access(kWeight, L.wt(k, c, r, s), e, e, false);
                  sink.access(kPackedWeight, pw, e, e, true);
                }
  const int64_t w_block = g.R * g.S * Cg * P.ocv * lanes, x_block = P.Hp * P.Wp * P.PS;
  const int64_t Ho = L.Ho, Wo = L.Wo, wc = P.ocv * lanes;
  const int64_t slot = 2 * get(b, "direct_blocked_avx512_pixel_tile_pair", blocking::kDirectBlockedAvx512PixelTilePair) * lanes;
  const bool two_rows = 2 * Wo <= P.tile;
  // One tile: rows rows of np pixels from (oh, ow), its sums in scratch slot sl.
  auto tile = [&](int64_t xg, int64_t wp, int64_t c0, int64_t nb, bool load, bool last, int64_t n, int64_t gb,
                  int64_t ob, int64_t oh, int64_t ow, int64_t rows, int64_t np, int64_t sl) {
    const int64_t pt = rows * np;
    if (load)
      for (int64_t q = 0; q < P.ocv * pt; ++q) sink.access(kScratch, sl * slot + q * lanes, e, lanes * e, false);
    int64_t w = wp;
    for (int64_t bk = 0; bk < nb; ++bk)
      for (int64_t r = 0; r < g.R; ++r)
        for (int64_t s = 0; s < g.S; ++s)
          for (int64_t c = c0 + bk * cbn; c < c0 + (bk + 1) * cbn; ++c, w += wc) {
            for (int64_t v = 0; v < P.ocv; ++v) sink.access(kPackedWeight, w + v * lanes, e, lanes * e, false);
            for (int64_t p = 0; p < pt; ++p) {
              const int64_t ih = (oh + p / np) * g.sh + r * g.dh, iw = (ow + p % np) * g.sw + s * g.dw;
              sink.access(kColumn, xg + (ih * P.Wp + iw) * P.PS + c * P.gpv, e, P.gpv * e, false);
            }
          }
    for (int64_t q = 0; q < P.ocv * pt; ++q) sink.access(kScratch, sl * slot + q * lanes, e, lanes * e, true);
    if (!last) return;
    for (int64_t v = 0; v < P.ocv; ++v) {
      const int64_t ch0 = gb * Kg * P.gpv + (ob * P.ocv + v) * lanes;
      for (int64_t p = 0; p < pt; ++p) {
        const int64_t y = oh + p / np, x = ow + p % np;
        if (g.nhwc) {
          sink.access(kOutput, L.out(n, ch0, y, x), e, lanes * e, true);
        } else {
          for (int64_t ch = 0; ch < lanes; ++ch) sink.access(kOutput, L.out(n, ch0 + ch, y, x), e, e, true);
        }
      }
    }
  };
  int64_t unit = 0;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t gb = 0; gb < P.GB; ++gb)
      for (int64_t ob = 0; ob < P.OB; ++ob)
        for (int64_t rb = 0; rb < P.RB; ++rb, ++unit) {
          if (!sink.unit(unit)) continue;
          const int64_t xg = (n * P.GB + gb) * x_block, wg = (gb * P.OB + ob) * w_block;
          const int64_t oh0 = rb * P.row_block, oh1 = std::min(Ho, oh0 + P.row_block);
          for (int64_t c0 = 0; c0 < Cg; c0 += P.pass) {
            const int64_t nb = std::min(P.pass, Cg - c0) / cbn, wp = wg + c0 * g.R * g.S * wc;
            const bool load = c0 > 0, last = c0 + P.pass >= Cg;
            int64_t sl = 0;
            for (int64_t oh = oh0; oh < oh1; ++oh) {
              if (two_rows && oh + 1 < oh1) {
                tile(xg, wp, c0, nb, load, last, n, gb, ob, oh, 0, 2, Wo, sl++);
                ++oh;
                continue;
              }
              for (int64_t ow = 0; ow < Wo; ++sl) {
                const int64_t left = Wo - ow, np = ceil_div(left, ceil_div(left, P.tile));
                tile(xg, wp, c0, nb, load, last, n, gb, ob, oh, ow, 1, np, sl);
                ow += np;
              }
            }
          }
        }
  sink.end_units();
}

// Scratch layout (operand "scratch"): the tile buffer, then the tap tables.
constexpr int64_t kScratchTables = 4096;

// direct.cpp (forward): weights packed once to [g][Kg/8][Cg][R][S][8] (zero
// padded); tasks (n, group, oc tile of `vectors` x 8 channels, block of
// `row_block` output rows). The reduction over input channels runs in blocks
// of `cin_block` channels (their packed weights fit `direct_cin_block_bytes`);
// between blocks each tile's partial sums wait in a per-task row buffer
// (operand "column"). Per block and output row: a tap table (input and weight
// offsets of each valid (r, s)) is written; border pixels (a tap column
// outside the image) run alone with their own table, interior pixels in
// balanced tiles of at most `tile`. A tile: load partial sums (later blocks),
// then for c, tap: read the two offsets, load the weight vectors, broadcast
// one input per pixel, FMA. In the last block fp32 tiles of full vectors
// store straight to the output (NHWC: a vector per pixel; NCHW: transposed in
// registers, a run of pixels per channel); others go through the tile buffer
// and a scalar store loop. Units: tasks.
template <class Sink>
void run_direct(Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  if (direct_blocked_applies(g, b, nest)) return run_direct_blocked(sink, g, b, nest);
  const Layout L(g);
  const auto plan = direct_plan(g, b, nest);
  const int64_t e = g.elem, Cg = g.Cg(), Kg = g.Kg(), V8 = plan.vec, vb = nest.vb;
  const int64_t panel = Cg * g.R * g.S * V8;  // one packed block of V8 channels
  for (int64_t grp = 0; grp < g.groups; ++grp)
    for (int64_t kb = 0; kb < plan.oc_blocks; ++kb)
      for (int64_t c = 0; c < Cg; ++c)
        for (int64_t r = 0; r < g.R; ++r)
          for (int64_t s = 0; s < g.S; ++s)
            for (int64_t i = 0; i < V8; ++i) {
              if (kb * V8 + i < Kg) sink.access(kWeight, L.wt(grp * Kg + kb * V8 + i, c, r, s), e, e, false);
              sink.access(kPackedWeight, (grp * plan.oc_blocks + kb) * panel + ((c * g.R + r) * g.S + s) * V8 + i,
                          e, e, true);
            }
  const int64_t ow_lo = std::min(L.Wo, std::max<int64_t>(0, ceil_div(g.pl, g.sw)));
  const int64_t ow_hi = std::min(L.Wo, std::max(ow_lo, floor_div(g.W - 1 - (g.S - 1) * g.dw + g.pl, g.sw) + 1));
  const bool blocked = plan.cin_block < Cg;
  const int64_t tables = kScratchTables / 8;  // in int64 units: in_x, in_w, bd_x, bd_w
  const int64_t RS = g.R * g.S;
  int64_t unit = 0;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t grp = 0; grp < g.groups; ++grp)
      for (int64_t ot = 0; ot < plan.oc_tiles; ++ot)
        for (int64_t rb = 0; rb < plan.row_blocks; ++rb, ++unit) {
          if (!sink.unit(unit)) continue;
          const int64_t kb0 = ot * plan.vectors, nv = std::min(plan.vectors, plan.oc_blocks - kb0);
          const int64_t k0 = grp * Kg + kb0 * V8, nk = std::min(nv * V8, Kg - kb0 * V8);
          const bool fuse = e == 4 && nest.isa != CpuIsa::Portable && nk == nv * V8;
          const int64_t oh_begin = rb * plan.row_block, oh_end = std::min(L.Ho, oh_begin + plan.row_block);
          for (int64_t c0 = 0; c0 < Cg; c0 += plan.cin_block) {
            const int64_t nc = std::min(plan.cin_block, Cg - c0);
            const bool last = c0 + plan.cin_block >= Cg, load_acc = c0 > 0;
            for (int64_t oh = oh_begin; oh < oh_end; ++oh) {
              const int64_t ih0 = oh * g.sh - g.pt;
              const int64_t r_lo = std::min(g.R, std::max<int64_t>(0, ceil_div(-ih0, g.dh)));
              const int64_t r_hi = std::min(g.R, std::max(r_lo, floor_div(g.H - 1 - ih0, g.dh) + 1));
              const int64_t nt = (r_hi - r_lo) * g.S;
              // The interior tap table: written once per row.
              emit_run(sink, vb, kScratch, tables, nt, 8, true);
              emit_run(sink, vb, kScratch, tables + RS, nt, 8, true);
              auto region = [&](int64_t ow, int& op) -> int64_t {
                if (blocked) { op = kColumn; return ((oh - oh_begin) * L.Wo + ow) * nv * V8; }
                op = kScratch;
                return 0;
              };
              auto tile = [&](int64_t ow0, int64_t np, int64_t s_lo, int64_t s_hi, int64_t table) {
                int rop;
                const int64_t roff = region(ow0, rop);
                if (load_acc)
                  for (int64_t v = 0; v < nv; ++v)
                    for (int64_t j = 0; j < np; ++j) sink.access(rop, roff + (v * np + j) * V8, e, V8 * e, false);
                for (int64_t c = c0; c < c0 + nc; ++c) {
                  int64_t t = 0;
                  for (int64_t r = r_lo; r < r_hi; ++r) {
                    const int64_t ih = ih0 + r * g.dh;
                    for (int64_t s = s_lo; s < s_hi; ++s, ++t) {
                      sink.access(kScratch, table + t, 8, 8, false);       // input offset of the tap
                      sink.access(kScratch, table + RS + t, 8, 8, false);  // weight offset of the tap
                      for (int64_t v = 0; v < nv; ++v)
                        sink.access(kPackedWeight,
                                    (grp * plan.oc_blocks + kb0 + v) * panel + ((c * g.R + r) * g.S + s) * V8, e,
                                    V8 * e, false);
                      for (int64_t j = 0; j < np; ++j)
                        sink.access(kInput, L.in(n, grp * Cg + c, ih, (ow0 + j) * g.sw - g.pl + s * g.dw), e, e,
                                    false);
                    }
                  }
                }
                if (last && fuse) {
                  if (g.nhwc) {
                    for (int64_t v = 0; v < nv; ++v)
                      for (int64_t j = 0; j < np; ++j)
                        sink.access(kOutput, L.out(n, k0 + v * V8, oh, ow0 + j), e, V8 * e, true);
                  } else if (V8 == 16) {
                    // AVX-512: each accumulator scattered, lane i to channel i's plane.
                    for (int64_t v = 0; v < nv; ++v)
                      for (int64_t j = 0; j < np; ++j)
                        for (int64_t i = 0; i < V8; ++i)
                          sink.access(kOutput, L.out(n, k0 + v * V8 + i, oh, ow0 + j), e, e, true);
                  } else {
                    // AVX2: transposed in registers, a masked store (vmaskmovps) per channel.
                    for (int64_t v = 0; v < nv; ++v)
                      for (int64_t p0 = 0; p0 < np; p0 += 8)
                        for (int64_t i = 0; i < V8; ++i)
                          sink.access_masked(kOutput, L.out(n, k0 + v * V8 + i, oh, ow0 + p0), e,
                                             std::min<int64_t>(8, np - p0) * e, true);
                  }
                  return;
                }
                for (int64_t v = 0; v < nv; ++v)
                  for (int64_t j = 0; j < np; ++j) sink.access(rop, roff + (v * np + j) * V8, e, V8 * e, true);
                if (!last) return;
                // store_tile: NHWC pixel by pixel, NCHW channel by channel.
                auto elem = [&](int64_t k, int64_t j) {
                  sink.access(rop, roff + ((k / V8) * np + j) * V8 + k % V8, e, e, false);
                  sink.access(kOutput, L.out(n, k0 + k, oh, ow0 + j), e, e, true);
                };
                if (g.nhwc) {
                  for (int64_t j = 0; j < np; ++j)
                    for (int64_t k = 0; k < nk; ++k) elem(k, j);
                } else {
                  for (int64_t k = 0; k < nk; ++k)
                    for (int64_t j = 0; j < np; ++j) elem(k, j);
                }
              };
              auto border = [&](int64_t ow) {
                const int64_t iw0 = ow * g.sw - g.pl;
                const int64_t s_lo = std::min(g.S, std::max<int64_t>(0, ceil_div(-iw0, g.dw)));
                const int64_t s_hi = std::min(g.S, std::max(s_lo, floor_div(g.W - 1 - iw0, g.dw) + 1));
                const int64_t bt = (r_hi - r_lo) * (s_hi - s_lo);
                emit_run(sink, vb, kScratch, tables + 2 * RS, bt, 8, true);
                emit_run(sink, vb, kScratch, tables + 3 * RS, bt, 8, true);
                tile(ow, 1, s_lo, s_hi, tables + 2 * RS);
              };
              for (int64_t ow = 0; ow < ow_lo; ++ow) border(ow);
              for (int64_t ow = ow_lo; ow < ow_hi;) {
                // Balanced widths: ceil(n / tile) tiles of near-equal width.
                const int64_t rem = ow_hi - ow, ntl = ceil_div(rem, plan.tile), np = ceil_div(rem, ntl);
                tile(ow, np, 0, g.S, tables);
                ow += np;
              }
              for (int64_t ow = ow_hi; ow < L.Wo; ++ow) border(ow);
            }
          }
        }
  sink.end_units();
}

// depthwise.cpp (forward).
// NHWC: the weight is packed once to [R][S][K] (and with a channel multiplier
// M > 1 the input is first expanded to K channels, NHWC). Tasks are (n, output
// row, group of `nhwc_channel_group` channels); per block of `chan_vecs` x 8
// channels: border pixels one at a time (valid taps only), interior pixels in
// tiles of `nhwc_pixel_tile`: per (r, s) load the weight vectors, then one
// input vector per (pixel, channel vector); store the tile.
// NCHW: tasks are (n, c, block of `row_tile` output rows): the input rows the
// block reads are first copied into a zero-padded buffer (split into stride
// phases), then per multiplier m and output row: per 4 x 8 outputs and tap,
// broadcast the tap weight and load 4 vectors from the buffer; store.
struct DepthwisePlan { int64_t vec, nhwc_pixels, chan_vecs, channel_group, width_vecs, row_tile, reg_rows, tile_accs; };

DepthwisePlan depthwise_plan(const std::map<std::string, int64_t>& b) {
  return {get(b, "depthwise_vec_width", blocking::kDepthwiseVecWidth),
          get(b, "depthwise_nhwc_pixel_tile", blocking::kDepthwiseNhwcPixelTile),
          get(b, "depthwise_nhwc_chan_vecs", blocking::kDepthwiseNhwcChanVecs),
          get(b, "depthwise_nhwc_channel_group", blocking::kDepthwiseNhwcChannelGroup),
          get(b, "depthwise_nchw_width_vecs", blocking::kDepthwiseNchwWidthVecs),
          get(b, "depthwise_row_tile", blocking::kDepthwiseRowTile),
          get(b, "depthwise_nchw_reg_rows", blocking::kDepthwiseNchwRegRows),
          get(b, "depthwise_nchw_tile_accs", blocking::kDepthwiseNchwTileAccs)};
}

// depthwise.cpp's transpose_avx512: dst[j * dst_ld + i] = src[i * src_ld + j]
// (i < rows, j < cols) by 16x16 blocks: 16 masked row loads, 16 masked stores.
template <class Sink>
void emit_transpose16(Sink& sink, int op_src, int64_t src, int64_t src_ld, int64_t rows, int64_t cols,
                      int op_dst, int64_t dst, int64_t dst_ld, int64_t e) {
  for (int64_t i0 = 0; i0 < rows; i0 += 16) {
    const int64_t ni = std::min<int64_t>(16, rows - i0);
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
      const int64_t nj = std::min<int64_t>(16, cols - j0);
      for (int64_t i = 0; i < ni; ++i) sink.access(op_src, src + (i0 + i) * src_ld + j0, e, nj * e, false);
      for (int64_t j = 0; j < nj; ++j) sink.access(op_dst, dst + (j0 + j) * dst_ld + i0, e, ni * e, true);
    }
  }
}

// A channel-vector view for the AVX-512 depthwise row kernel: input (ih, iw, c)
// at x + (ih * W + iw) * x_pix + c of operand xop, weight (r, s, c) at
// w + (r * S + s) * w_tap + c, output (oh, ow, c) at y + (oh * Wo + ow) * y_pix + c.
struct ChanView {
  int xop; int64_t x, x_pix;
  int64_t w, w_tap;
  int yop; int64_t y, y_pix;
  // The plane the kernel sees (a padded tile has no padding).
  int64_t H, W, Wo, pt, pl;
};

// chan_row_avx512: one output row, channels [k0, k1); pixel tiles of `P` outer
// (interior: every tap in bounds; border and partial tiles mask each
// (pixel, column) tap, and a masked-off load reads nothing), blocks of `V`
// 16-lane channel vectors inner; per (r, s): V weight loads, P x V input loads;
// then P x V stores. The kernel's software prefetches are not traced.
template <class Sink>
void emit_chan_row(Sink& sink, const Geometry& g, const ChanView& cv, int64_t oh, int64_t k0, int64_t k1,
                   int64_t P, int64_t V) {
  const int64_t e = g.elem, lanes = 16;
  const int64_t ih0 = oh * g.sh - cv.pt;
  const int64_t r0 = std::max<int64_t>(0, ceil_div(-ih0, g.dh));
  const int64_t r1 = std::min(g.R, floor_div(cv.H - 1 - ih0, g.dh) + 1);
  const int64_t ow_lo = std::min(cv.Wo, ceil_div(cv.pl, g.sw));
  const int64_t ow_hi = std::min(cv.Wo, std::max(ow_lo, floor_div(cv.W - 1 - (g.S - 1) * g.dw + cv.pl, g.sw) + 1));
  for (int64_t ow = 0; ow < cv.Wo; ow += P) {
    const int64_t npix = std::min(P, cv.Wo - ow);
    const bool interior = ow >= ow_lo && ow + P <= ow_hi;
    for (int64_t k = k0; k < k1; k += lanes * V) {
      const int64_t nk = std::min(lanes * V, k1 - k), nv = ceil_div(nk, lanes);
      auto vlen = [&](int64_t v) { return std::min(lanes, nk - v * lanes) * e; };
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t s = 0; s < g.S; ++s) {
          for (int64_t v = 0; v < nv; ++v) sink.access(kPackedWeight, cv.w + (r * g.S + s) * cv.w_tap + k + v * lanes, e, vlen(v), false);
          for (int64_t q = 0; q < P; ++q) {
            const int64_t iw = (ow + q) * g.sw - cv.pl + s * g.dw;
            if (!interior && (q >= npix || iw < 0 || iw >= cv.W)) continue;
            for (int64_t v = 0; v < nv; ++v)
              sink.access(cv.xop, cv.x + ((ih0 + r * g.dh) * cv.W + iw) * cv.x_pix + k + v * lanes, e, vlen(v), false);
          }
        }
      for (int64_t v = 0; v < nv; ++v)
        for (int64_t q = 0; q < npix; ++q)
          sink.access(cv.yop, cv.y + (oh * cv.Wo + ow + q) * cv.y_pix + k + v * lanes, e, vlen(v), true);
    }
  }
}

// The AVX-512 depthwise paths (float32, depthwise.cpp): which one runs.
enum class DwPath { Rows, ChanRows, CBlock, NchwSlide };

DwPath depthwise_path(const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  if (nest.isa != CpuIsa::Avx512 || g.elem != 4) return DwPath::Rows;
  const int64_t P = get(b, "depthwise_avx512_pixel_tile", blocking::kDepthwiseAvx512PixelTile);
  const int64_t kMaxS = get(b, "depthwise_avx512_chan_max_s", blocking::kDepthwiseAvx512ChanMaxS);
  const int64_t Wo = g.Wo();
  if (!g.nhwc && (g.R == 3 || g.R == 5 || g.R == 7) && (g.sh == 1 || g.sh == 2) && g.dh == 1 &&
      Wo >= get(b, "depthwise_avx512_nchw_slide_min_width", blocking::kDepthwiseAvx512NchwSlideMinWidth) * g.sw)
    return DwPath::NchwSlide;
  if (g.nhwc) {
    const bool cblock = g.R * g.S >= get(b, "depthwise_avx512_nhwc_tile_min_taps", blocking::kDepthwiseAvx512NhwcTileMinTaps) &&
                        Wo >= 2 * P &&
                        Wo <= get(b, "depthwise_avx512_nhwc_tile_max_width", blocking::kDepthwiseAvx512NhwcTileMaxWidth) &&
                        g.S <= kMaxS;
    return cblock ? DwPath::CBlock : (g.S <= kMaxS ? DwPath::ChanRows : DwPath::Rows);
  }
  const bool wide_rows = g.sh == 1 && g.sw == 1 &&
                         g.R * g.S <= get(b, "depthwise_avx512_nchw_rows_max_taps", blocking::kDepthwiseAvx512NchwRowsMaxTaps) &&
                         Wo >= get(b, "depthwise_avx512_nchw_rows_min_width", blocking::kDepthwiseAvx512NchwRowsMinWidth);
  return g.K == g.C && g.S <= kMaxS && !wide_rows ? DwPath::CBlock : DwPath::Rows;
}

// Element offset of the NCHW output tile buffer inside operand "tile" (after the input tile).
constexpr int64_t kTileOutOffset = int64_t(1) << 32;

// forward_cblock_avx512: tasks (n, block of `channel_block` channels, block of
// output rows whose padded input rows take about `tile_bytes`): the rows are
// written into a zero-padded [row][column][channel] tile (operand "tile"; NHWC
// a copy of the channel slice per pixel, NCHW 16x16 transposes), the row kernel
// runs on it with every pixel tile interior, NCHW output goes through a tile
// buffer and is transposed back. Units: tasks.
struct CBlockPlan { int64_t CB, Wp, halo, ncb, rows_per_task, nrb; };

CBlockPlan cblock_plan(const Geometry& g, const std::map<std::string, int64_t>& b) {
  CBlockPlan p;
  p.CB = get(b, "depthwise_avx512_channel_block", blocking::kDepthwiseAvx512ChannelBlock);
  p.Wp = (g.Wo() - 1) * g.sw + (g.S - 1) * g.dw + 1;
  p.halo = (g.R - 1) * g.dh;
  p.ncb = ceil_div(g.K, p.CB);
  const int64_t budget = std::max<int64_t>(
      1, get(b, "depthwise_avx512_tile_bytes", blocking::kDepthwiseAvx512TileBytes) / (p.CB * p.Wp * 4));
  p.rows_per_task = std::max<int64_t>(1, std::min(g.Ho(), (budget - p.halo) / g.sh));
  p.nrb = ceil_div(g.Ho(), p.rows_per_task);
  return p;
}

template <class Sink>
void run_depthwise_cblock(Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest,
                          int xop) {
  const Layout L(g);
  const auto cp = cblock_plan(g, b);
  const int64_t e = g.elem, K = g.K, Ho = L.Ho, Wo = L.Wo, vb = nest.vb;
  const int64_t P = get(b, "depthwise_avx512_pixel_tile", blocking::kDepthwiseAvx512PixelTile);
  const int64_t V = get(b, "depthwise_avx512_chan_vecs", blocking::kDepthwiseAvx512ChanVecs);
  int64_t unit = 0;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t cb = 0; cb < cp.ncb; ++cb)
      for (int64_t rb = 0; rb < cp.nrb; ++rb, ++unit) {
        if (!sink.unit(unit)) continue;
        const int64_t c0 = cb * cp.CB, nc = std::min(cp.CB, K - c0), ld = ceil_div(nc, 16) * 16;
        const int64_t oh0 = rb * cp.rows_per_task, oh1 = std::min(Ho, oh0 + cp.rows_per_task);
        const int64_t nro = oh1 - oh0, ihf = oh0 * g.sh - g.pt;
        const int64_t nrows = (nro - 1) * g.sh + cp.halo + 1;
        const int64_t j0 = std::min(cp.Wp, g.pl), j1 = std::max(j0, std::min(cp.Wp, g.pl + g.W));
        for (int64_t bi = 0; bi < nrows; ++bi) {
          const int64_t ih = ihf + bi, row = bi * cp.Wp * ld;
          if (ih < 0 || ih >= g.H) { emit_run(sink, vb, kTile, row, cp.Wp * ld, e, true); continue; }
          if (j0 > 0) emit_run(sink, vb, kTile, row, j0 * ld, e, true);
          if (j1 < cp.Wp) emit_run(sink, vb, kTile, row + j1 * ld, (cp.Wp - j1) * ld, e, true);
          if (g.nhwc) {
            for (int64_t j = j0; j < j1; ++j) {
              emit_run(sink, vb, xop, ((n * g.H + ih) * g.W + j - g.pl) * K + c0, nc, e, false);
              emit_run(sink, vb, kTile, row + j * ld, nc, e, true);
            }
          } else {
            emit_transpose16(sink, kInput, L.in(n, c0, ih, j0 - g.pl), g.H * g.W, nc, j1 - j0, kTile, row + j0 * ld,
                             ld, e);
          }
        }
        ChanView cv;
        cv.xop = kTile; cv.x = 0; cv.x_pix = ld;
        cv.w = c0; cv.w_tap = K;
        if (g.nhwc) { cv.yop = kOutput; cv.y = L.out(n, c0, oh0, 0); cv.y_pix = K; }
        else { cv.yop = kTile; cv.y = kTileOutOffset; cv.y_pix = ld; }
        cv.H = nrows; cv.W = cp.Wp; cv.Wo = Wo; cv.pt = 0; cv.pl = 0;
        for (int64_t oh = 0; oh < nro; ++oh) emit_chan_row(sink, g, cv, oh, 0, nc, P, V);
        if (!g.nhwc)
          emit_transpose16(sink, kTile, kTileOutOffset, ld, nro * Wo, nc, kOutput, L.out(n, c0, oh0, 0), Ho * Wo, e);
      }
  sink.end_units();
}

// forward_nchw_slide_avx512: tasks (n, c, block of `nchw_slide_task_rows` output rows,
// rounded up to the register tile's rows T): the block's input rows, padding
// rows as zeros, into a 64-byte aligned, zero-padded, stride-phase-split row
// buffer (operand "column", 16-lane rows); then per multiplier m, tile of T
// output rows and chunk of up to `nchw_slide_width_vecs` row vectors: per
// kernel column s, per buffer row b of the tile and vector, one load, and a
// broadcast weight load per output row that reads row b; then T x NV stores
// (rows < Ho). The last tile of a plane runs its rows past Ho on zero rows.
struct NchwSlidePlan { int64_t Lq, row_elems, T, rows_per_task, nrb, NV; };

NchwSlidePlan nchw_slide_plan(const Geometry& g, const std::map<std::string, int64_t>& b) {
  NchwSlidePlan p;
  const int64_t Wo = g.Wo(), rows = get(b, "depthwise_avx512_nchw_slide_rows", blocking::kDepthwiseAvx512NchwSlideRows);
  p.Lq = ceil_div(ceil_div(Wo, 16) * 16 + (g.S - 1) * g.dw / g.sw, 16) * 16;
  p.row_elems = g.sw * p.Lq;
  p.T = ceil_div(Wo, 16) <= 2 ? 2 * rows : rows;
  p.rows_per_task =
      ceil_div(get(b, "depthwise_avx512_nchw_slide_task_rows", blocking::kDepthwiseAvx512NchwSlideTaskRows), p.T) * p.T;
  p.nrb = ceil_div(g.Ho(), p.rows_per_task);
  p.NV = get(b, "depthwise_avx512_nchw_slide_width_vecs", blocking::kDepthwiseAvx512NchwSlideWidthVecs);
  return p;
}

template <class Sink>
void run_depthwise_nchw_slide(Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b,
                              const Nest& nest) {
  const Layout L(g);
  const auto sp = nchw_slide_plan(g, b);
  const int64_t e = g.elem, M = std::max<int64_t>(1, g.K / g.C), Ho = L.Ho, Wo = L.Wo, vb = nest.vb;
  int64_t unit = 0;
  for (int64_t n = 0; n < g.N; ++n)
    for (int64_t c = 0; c < g.C; ++c)
      for (int64_t rb = 0; rb < sp.nrb; ++rb, ++unit) {
        if (!sink.unit(unit)) continue;
        const int64_t oh0 = rb * sp.rows_per_task, oh1 = std::min(Ho, oh0 + sp.rows_per_task);
        const int64_t ihf = oh0 * g.sh - g.pt, nb = (ceil_div(oh1 - oh0, sp.T) * sp.T - 1) * g.sh + g.R;
        for (int64_t bi = 0; bi < nb; ++bi) {
          const int64_t ih = ihf + bi;
          if (ih < 0 || ih >= g.H) { emit_run(sink, vb, kColumn, bi * sp.row_elems, sp.row_elems, e, true); continue; }
          for (int64_t q = 0; q < g.sw; ++q)
            emit_row_phase(sink, g, vb, L.in(n, c, ih, 0), q, bi * sp.row_elems + q * sp.Lq, sp.Lq, e);
        }
        const int64_t NB = (sp.T - 1) * g.sh + g.R;
        for (int64_t m = 0; m < M; ++m) {
          const int64_t k = c * M + m;
          for (int64_t oh = oh0; oh < oh1; oh += sp.T)
            for (int64_t j = 0; j < Wo; j += 16 * sp.NV) {
              const int64_t nv = std::min(sp.NV, ceil_div(Wo - j, 16));
              const int64_t row0 = (oh - oh0) * g.sh * sp.row_elems;
              for (int64_t s = 0; s < g.S; ++s) {
                const int64_t off = ((s * g.dw) % g.sw) * sp.Lq + (s * g.dw) / g.sw;
                for (int64_t bi = 0; bi < NB; ++bi)
                  for (int64_t v = 0; v < nv; ++v) {
                    sink.access(kColumn, row0 + bi * sp.row_elems + off + j + 16 * v, e, 16 * e, false);
                    for (int64_t t = 0; t < sp.T; ++t) {
                      const int64_t r = bi - g.sh * t;
                      if (r >= 0 && r < g.R) sink.access(kWeight, L.wt(k, 0, r, s), e, e, false);
                    }
                  }
              }
              for (int64_t t = 0; t < sp.T && oh + t < oh1; ++t)
                for (int64_t v = 0; v < nv; ++v)
                  sink.access(kOutput, L.out(n, k, oh + t, j + 16 * v), e, std::min<int64_t>(16, Wo - j - 16 * v) * e,
                              true);
            }
        }
      }
  sink.end_units();
}

template <class Sink>
void run_depthwise(Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b, const Nest& nest) {
  const Layout L(g);
  const auto dp = depthwise_plan(b);
  const int64_t e = g.elem, M = std::max<int64_t>(1, g.K / g.C), RS = g.R * g.S, V8 = dp.vec, vb = nest.vb;
  const DwPath path = depthwise_path(g, b, nest);
  if (path == DwPath::NchwSlide) return run_depthwise_nchw_slide(sink, g, b, nest);
  if (!g.nhwc && path == DwPath::CBlock) {
    // forward_nchw_cblock_avx512: the weight transposed to [R][S][K] first.
    emit_transpose16(sink, kWeight, 0, RS, g.K, RS, kPackedWeight, 0, g.K, e);
    return run_depthwise_cblock(sink, g, b, nest, kInput);
  }
  if (g.nhwc) {
    if (path != DwPath::Rows) {
      emit_transpose16(sink, kWeight, 0, RS, g.K, RS, kPackedWeight, 0, g.K, e);  // pack_weight_rsk
    } else {
      for (int64_t k = 0; k < g.K; ++k)
        for (int64_t rs = 0; rs < RS; ++rs) {
          sink.access(kWeight, L.wt(k, 0, rs / g.S, rs % g.S), e, e, false);
          sink.access(kPackedWeight, rs * g.K + k, e, e, true);
        }
    }
    // With M > 1 the kernel reads an expanded copy of the input (operand "column").
    const int xop = M > 1 ? kColumn : kInput;
    if (M > 1)
      for (int64_t pix = 0; pix < g.N * g.H * g.W; ++pix)
        for (int64_t k = 0; k < g.K; ++k) {
          sink.access(kInput, pix * g.C + k / M, e, e, false);
          sink.access(kColumn, pix * g.K + k, e, e, true);
        }
    if (path == DwPath::CBlock) return run_depthwise_cblock(sink, g, b, nest, xop);
    if (path == DwPath::ChanRows) {
      // Tasks (n, output row, group of `avx512_channel_group` channels).
      const int64_t CG = get(b, "depthwise_avx512_channel_group", blocking::kDepthwiseAvx512ChannelGroup);
      const int64_t P = get(b, "depthwise_avx512_pixel_tile", blocking::kDepthwiseAvx512PixelTile);
      const int64_t V = get(b, "depthwise_avx512_chan_vecs", blocking::kDepthwiseAvx512ChanVecs);
      const int64_t ncg = ceil_div(g.K, CG);
      int64_t unit = 0;
      for (int64_t n = 0; n < g.N; ++n)
        for (int64_t oh = 0; oh < L.Ho; ++oh)
          for (int64_t cg = 0; cg < ncg; ++cg, ++unit) {
            if (!sink.unit(unit)) continue;
            ChanView cv;
            cv.xop = xop; cv.x = n * g.H * g.W * g.K; cv.x_pix = g.K;
            cv.w = 0; cv.w_tap = g.K;
            cv.yop = kOutput; cv.y = L.out(n, 0, 0, 0); cv.y_pix = g.K;
            cv.H = g.H; cv.W = g.W; cv.Wo = L.Wo; cv.pt = g.pt; cv.pl = g.pl;
            emit_chan_row(sink, g, cv, oh, cg * CG, std::min(g.K, (cg + 1) * CG), P, V);
          }
      sink.end_units();
      return;
    }
    auto xin = [&](int64_t n, int64_t h, int64_t w, int64_t k) { return ((n * g.H + h) * g.W + w) * g.K + k; };
    const int64_t ncg = ceil_div(g.K, dp.channel_group);
    const int64_t ow_lo = std::min(L.Wo, ceil_div(g.pl, g.sw));
    const int64_t ow_hi = std::min(L.Wo, std::max(ow_lo, floor_div(g.W - 1 - (g.S - 1) * g.dw + g.pl, g.sw) + 1));
    int64_t unit = 0;
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t oh = 0; oh < L.Ho; ++oh)
        for (int64_t cg = 0; cg < ncg; ++cg, ++unit) {
          if (!sink.unit(unit)) continue;
          const int64_t k0g = cg * dp.channel_group, k1g = std::min(g.K, k0g + dp.channel_group);
          const int64_t ih0 = oh * g.sh - g.pt;
          const int64_t r0 = std::max<int64_t>(0, ceil_div(-ih0, g.dh));
          const int64_t r1 = std::min(g.R, floor_div(g.H - 1 - ih0, g.dh) + 1);
          // Pixel-outer: border pixels alone, interior pixels in tiles; per
          // pixel (tile), every channel block of the group.
          auto channels = [&](int64_t ow, int64_t np, bool tiled) {
            int64_t k = k0g;
            while (k < k1g) {
              // Blocks of chan_vecs vectors, then single vectors, then a masked tail.
              const int64_t nv = k + V8 * dp.chan_vecs <= k1g ? dp.chan_vecs : 1;
              const int64_t width = std::min(nv * V8, k1g - k);
              auto vlen = [&](int64_t v) { return std::min(V8, width - v * V8) * e; };
              const int64_t iw0 = ow * g.sw - g.pl;
              const int64_t s0 = tiled ? 0 : std::max<int64_t>(0, ceil_div(-iw0, g.dw));
              const int64_t s1 = tiled ? g.S : std::min(g.S, floor_div(g.W - 1 - iw0, g.dw) + 1);
              for (int64_t r = r0; r < r1; ++r)
                for (int64_t s = s0; s < s1; ++s) {
                  if (tiled) {
                    for (int64_t v = 0; v < nv; ++v)
                      sink.access(kPackedWeight, (r * g.S + s) * g.K + k + v * V8, e, vlen(v), false);
                    for (int64_t q = 0; q < np; ++q)
                      for (int64_t v = 0; v < nv; ++v)
                        sink.access(xop, xin(n, ih0 + r * g.dh, (ow + q) * g.sw - g.pl + s * g.dw, k + v * V8), e,
                                    vlen(v), false);
                  } else {
                    for (int64_t v = 0; v < nv; ++v) {
                      sink.access(xop, xin(n, ih0 + r * g.dh, iw0 + s * g.dw, k + v * V8), e, vlen(v), false);
                      sink.access(kPackedWeight, (r * g.S + s) * g.K + k + v * V8, e, vlen(v), false);
                    }
                  }
                }
              for (int64_t q = 0; q < np; ++q)
                for (int64_t v = 0; v < nv; ++v)
                  sink.access(kOutput, L.out(n, k + v * V8, oh, ow + q), e, vlen(v), true);
              k += width;
            }
          };
          int64_t ow = 0;
          for (; ow < ow_lo; ++ow) channels(ow, 1, false);
          for (; ow + dp.nhwc_pixels <= ow_hi; ow += dp.nhwc_pixels) channels(ow, dp.nhwc_pixels, true);
          for (; ow < L.Wo; ++ow) channels(ow, 1, false);
        }
  } else {
    // The per-task row buffer (operand "column", reused by every task).
    const int64_t Lq = ceil_div(L.Wo, V8) * V8 + (g.S - 1) * g.dw / g.sw;
    const int64_t row_elems = g.sw * Lq;
    const int64_t nrb = ceil_div(L.Ho, dp.row_tile);
    // Narrow rows (few vectors) take twice the rows per register tile.
    const int64_t reg_rows = ceil_div(L.Wo, V8) * 2 * dp.reg_rows <= dp.tile_accs ? 2 * dp.reg_rows : dp.reg_rows;
    int64_t unit = 0;
    for (int64_t n = 0; n < g.N; ++n)
      for (int64_t c = 0; c < g.C; ++c)
        for (int64_t rb = 0; rb < nrb; ++rb, ++unit) {
          if (!sink.unit(unit)) continue;
          const int64_t oh0 = rb * dp.row_tile, oh1 = std::min(L.Ho, oh0 + dp.row_tile);
          const int64_t ih_lo = std::max<int64_t>(0, oh0 * g.sh - g.pt);
          const int64_t ih_hi = std::min(g.H, (oh1 - 1) * g.sh - g.pt + (g.R - 1) * g.dh + 1);
          const int64_t nrows = std::max<int64_t>(0, ih_hi - ih_lo);
          for (int64_t bi = 0; bi < nrows; ++bi)
            for (int64_t q = 0; q < g.sw; ++q)
              emit_row_phase(sink, g, vb, L.in(n, c, ih_lo + bi, 0), q, (bi * g.sw + q) * Lq, Lq, e);
          for (int64_t m = 0; m < M; ++m) {
            const int64_t k = c * M + m;
            for (int64_t oh = oh0; oh < oh1;) {
              // `rows` output rows whose kernel rows are all inside share one tap list.
              int64_t rows = 1;
              const int64_t ih_first = oh * g.sh - g.pt;
              if (ih_first >= 0 && oh + reg_rows <= oh1 && (oh + reg_rows - 1) * g.sh - g.pt + (g.R - 1) * g.dh < g.H)
                rows = reg_rows;
              std::vector<int64_t> taps;
              for (int64_t r = 0; r < g.R; ++r) {
                const int64_t ih = ih_first + r * g.dh;
                if (ih < 0 || ih >= g.H) continue;
                for (int64_t s = 0; s < g.S; ++s) {
                  taps.push_back((ih - ih_lo) * row_elems + ((s * g.dw) % g.sw) * Lq + (s * g.dw) / g.sw);
                  sink.access(kWeight, L.wt(k, 0, r, s), e, e, false);
                  sink.access(kScratch, int64_t(taps.size()) - 1, e, e, true);  // ws[nt]
                }
              }
              const int64_t nt = int64_t(taps.size());
              const int64_t V = std::min(dp.width_vecs, std::max<int64_t>(1, dp.tile_accs / rows));
              const int64_t in_stride = g.sh * row_elems;
              auto tile = [&](int64_t j, int64_t nv, int64_t last_len) {
                for (int64_t t = 0; t < nt; ++t) {
                  sink.access(kScratch, t, e, e, false);  // the tap weight, broadcast from ws
                  for (int64_t rr = 0; rr < rows; ++rr)
                    for (int64_t v = 0; v < nv; ++v)
                      sink.access(kColumn, taps[size_t(t)] + rr * in_stride + j + v * V8, e, V8 * e, false);
                }
                for (int64_t rr = 0; rr < rows; ++rr)
                  for (int64_t v = 0; v < nv; ++v)
                    sink.access(kOutput, L.out(n, k, oh + rr, j + v * V8), e, (v == nv - 1 ? last_len : V8) * e, true);
              };
              int64_t j = 0;
              for (; j + V8 * V <= L.Wo; j += V8 * V) tile(j, V, V8);
              const int64_t rem = L.Wo - j;
              if (rem > 0) tile(j, ceil_div(rem, V8), rem % V8 ? rem % V8 : V8);
              oh += rows;
            }
          }
        }
  }
  sink.end_units();
}

int64_t units_of(const std::string& algo, const Geometry& g, const std::map<std::string, int64_t>& b,
                 const Nest& nest) {
  if (algo == "reference") return g.N * g.K;
  if (algo == "im2col") return im2col_plan(g, b).tiles;
  if (algo == "direct") {
    if (direct_blocked_applies(g, b, nest)) {
      const auto p = blocked_plan(g, b);
      return g.N * p.GB * p.OB * p.RB;
    }
    const auto p = direct_plan(g, b, nest);
    return g.N * g.groups * p.oc_tiles * p.row_blocks;
  }
  if (algo == "depthwise") {
    const auto dp = depthwise_plan(b);
    switch (depthwise_path(g, b, nest)) {
      case DwPath::CBlock: {
        const auto cp = cblock_plan(g, b);
        return g.N * cp.ncb * cp.nrb;
      }
      case DwPath::NchwSlide:
        return g.N * g.C * nchw_slide_plan(g, b).nrb;
      case DwPath::ChanRows:
        return g.N * g.Ho() *
               ceil_div(g.K, get(b, "depthwise_avx512_channel_group", blocking::kDepthwiseAvx512ChannelGroup));
      default:
        break;
    }
    return g.nhwc ? g.N * g.Ho() * ceil_div(g.K, dp.channel_group) : g.N * g.C * ceil_div(g.Ho(), dp.row_tile);
  }
  throw std::invalid_argument("cachesim: unknown algorithm '" + algo +
                              "'; expected reference, im2col, direct or depthwise");
}

void check_geometry(const std::string& algo, const Geometry& g) {
  if (g.N <= 0 || g.C <= 0 || g.H <= 0 || g.W <= 0 || g.K <= 0 || g.R <= 0 || g.S <= 0)
    throw std::invalid_argument("cachesim: sizes must be positive");
  if (g.groups <= 0 || g.C % g.groups || g.K % g.groups)
    throw std::invalid_argument("cachesim: groups must divide in and out channels");
  if (g.sh <= 0 || g.sw <= 0 || g.dh <= 0 || g.dw <= 0 || g.pt < 0 || g.pb < 0 || g.pl < 0 || g.pr < 0)
    throw std::invalid_argument("cachesim: stride/dilation must be positive, padding non-negative");
  if (g.Ho() <= 0 || g.Wo() <= 0) throw std::invalid_argument("cachesim: empty output");
  if (g.elem != 4 && g.elem != 8) throw std::invalid_argument("cachesim: element size must be 4 or 8");
  if (algo == "depthwise" && !(g.groups == g.C && g.K % g.C == 0))
    throw std::invalid_argument("cachesim: depthwise needs groups == in_channels");
}

template <class Sink>
void run(const std::string& algo, Sink& sink, const Geometry& g, const std::map<std::string, int64_t>& b,
         const Nest& nest) {
  if (algo == "reference") run_reference(sink, g);
  else if (algo == "im2col") run_im2col(sink, g, b, nest);
  else if (algo == "direct") run_direct(sink, g, b, nest);
  else run_depthwise(sink, g, b, nest);
}

}  // namespace

CpuIsa parse_sim_isa(const std::string& name) {
  if (name == "avx512") return CpuIsa::Avx512;
  if (name == "avx2") return CpuIsa::Avx2;
  if (name == "portable") return CpuIsa::Portable;
  throw std::invalid_argument("cachesim: unknown ISA '" + name + "'; expected portable, avx2 or avx512");
}

Result simulate(const std::string& algo, const Geometry& g, const std::map<std::string, int64_t>& blocking,
                const Options& opt, CpuIsa isa) {
  check_geometry(algo, g);
  const Nest nest = nest_of(isa, g.elem);
  const int64_t units = units_of(algo, g, blocking, nest);
  SimSink sink(opt, units);
  run(algo, sink, g, blocking, nest);
  return sink.result();
}

Result replay(const std::vector<int64_t>& addr, const std::vector<int64_t>& bytes,
              const std::vector<bool>& write, const Options& opt) {
  if (addr.size() != bytes.size() || addr.size() != write.size())
    throw std::invalid_argument("replay: addresses, sizes and write flags must have the same length");
  SimSink sink(opt, 1);
  sink.unit(0);
  for (size_t i = 0; i < addr.size(); ++i) {
    if (addr[i] < 0 || bytes[i] <= 0) throw std::invalid_argument("replay: negative address or empty access");
    sink.access(kInput, addr[i], 1, bytes[i], write[i]);
  }
  sink.end_units();
  return sink.result();
}

std::vector<std::vector<int64_t>> record(const std::string& algo, const Geometry& g,
                                         const std::map<std::string, int64_t>& blocking, CpuIsa isa,
                                         int64_t unit_begin, int64_t unit_end, int64_t max_records) {
  check_geometry(algo, g);
  const Nest nest = nest_of(isa, g.elem);
  units_of(algo, g, blocking, nest);
  RecordSink sink(unit_begin, unit_end, max_records);
  run(algo, sink, g, blocking, nest);
  return sink.rows;
}

namespace {
FASTCONV_TARGET_AVX2 float sum_avx2(const float* p, int64_t n) {
#if FASTCONV_X86
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
  }
  float out[8];
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  float s = 0;
  for (float v : out) s += v;
  for (; i < n; ++i) s += p[i];
  return s;
#else
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += p[i];
  return s;
#endif
}
float sum_portable(const float* p, int64_t n) {
  float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) { s0 += p[i]; s1 += p[i + 1]; s2 += p[i + 2]; s3 += p[i + 3]; }
  for (; i < n; ++i) s0 += p[i];
  return s0 + s1 + s2 + s3;
}
}  // namespace

double read_bandwidth_gbs(int64_t bytes, int64_t reps) {
  if (bytes < 1024 || reps <= 0) throw std::invalid_argument("read_bandwidth: need >= 1 KiB and reps > 0");
  const int64_t n = bytes / int64_t(sizeof(float));
  std::vector<float> buf(size_t(n), 1.0f);
  const bool avx = use_avx2_fma();
  volatile float sink = 0;
  auto pass = [&] { return avx ? sum_avx2(buf.data(), n) : sum_portable(buf.data(), n); };
  sink = sink + pass();  // warm the buffer into the caches it fits in
  double best = 1e30;
  // Best of a few timed batches: the ceiling, not the average.
  for (int trial = 0; trial < 5; ++trial) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t r = 0; r < reps; ++r) sink = sink + pass();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, dt);
  }
  return double(n) * sizeof(float) * double(reps) / best / 1e9;
}

}  // namespace cachesim
}  // namespace fastconv

// ------------------------------------------------------------ Python binding

// FASTCONV_CACHESIM_STANDALONE builds the simulator without torch (quick C++ tests).
#ifndef FASTCONV_CACHESIM_STANDALONE
// Plain pybind11 (not torch/extension.h): this file needs no tensors, and
// compiles in a fraction of the time.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace fastconv {
namespace cachesim {
namespace {

namespace py = pybind11;

Geometry geometry_from(const py::dict& d) {
  Geometry g{};
  auto i = [&](const char* k) { return d[k].cast<int64_t>(); };
  g.N = i("N"); g.C = i("C"); g.H = i("H"); g.W = i("W"); g.K = i("K"); g.R = i("R"); g.S = i("S");
  auto st = d["stride"].cast<std::vector<int64_t>>();
  auto pd = d["padding"].cast<std::vector<int64_t>>();
  auto dl = d["dilation"].cast<std::vector<int64_t>>();
  if (st.size() != 2 || pd.size() != 4 || dl.size() != 2)
    throw std::invalid_argument("geometry: stride[2], padding[4] = (top, bottom, left, right), dilation[2]");
  g.sh = st[0]; g.sw = st[1]; g.pt = pd[0]; g.pb = pd[1]; g.pl = pd[2]; g.pr = pd[3];
  g.dh = dl[0]; g.dw = dl[1];
  g.groups = i("groups"); g.elem = i("elem");
  const auto layout = d["layout"].cast<std::string>();
  if (layout != "nchw" && layout != "nhwc") throw std::invalid_argument("geometry: layout must be nchw or nhwc");
  g.nhwc = layout == "nhwc";
  return g;
}

Options options_from(const std::vector<std::tuple<int64_t, int64_t, int64_t>>& levels, int64_t sample,
                     bool hist, bool skip_masked = false) {
  Options o;
  for (auto& [size, ways, line] : levels) o.levels.push_back({size, ways, line});
  o.sample_accesses = sample;
  o.reuse_histogram = hist;
  o.skip_masked = skip_masked;
  return o;
}

py::dict to_dict(const Result& r) {
  py::dict d;
  py::list levels;
  for (auto& l : r.levels) {
    py::dict x;
    x["accesses"] = l.accesses; x["hits"] = l.hits; x["misses"] = l.misses; x["writebacks"] = l.writebacks;
    levels.append(x);
  }
  d["levels"] = levels;
  d["l1_bytes"] = r.l1_bytes;
  d["accesses"] = r.accesses;
  py::dict ops;
  for (int op = 0; op < kNumOperands; ++op) {
    if (r.operand_accesses[size_t(op)] == 0) continue;
    py::dict x;
    x["accesses"] = r.operand_accesses[size_t(op)];
    x["l1_misses"] = r.operand_l1_misses[size_t(op)];
    x["last_level_misses"] = r.operand_last_misses[size_t(op)];
    ops[operand_name(op)] = x;
  }
  d["operands"] = ops;
  d["reuse_hist"] = r.reuse_hist;
  d["reuse_cold"] = r.reuse_cold;
  d["units_total"] = r.units_total;
  d["units_counted"] = r.units_counted;
  d["scale"] = r.scale;
  return d;
}

}  // namespace

void bind(py::module_& m) {
  m.def("cachesim_simulate",
        [](const std::string& algo, py::dict geometry, std::map<std::string, int64_t> blocking,
           std::vector<std::tuple<int64_t, int64_t, int64_t>> levels, int64_t sample_accesses,
           bool reuse_histogram, const std::string& isa, bool valgrind_view) {
          const Geometry g = geometry_from(geometry);
          const Options o = options_from(levels, sample_accesses, reuse_histogram, valgrind_view);
          const CpuIsa i = parse_sim_isa(isa);
          Result r;
          {
            py::gil_scoped_release nogil;
            r = simulate(algo, g, blocking, o, i);
          }
          return to_dict(r);
        },
        py::arg("algo"), py::arg("geometry"), py::arg("blocking"), py::arg("levels"),
        py::arg("sample_accesses") = 0, py::arg("reuse_histogram") = false, py::arg("isa") = "avx2",
        py::arg("valgrind_view") = false,
        "Replay algo's loop nest (the kernels' path on ISA isa: portable, avx2 or avx512) through an "
        "LRU hierarchy levels=[(size, ways, line), ...]; valgrind_view drops the AVX masked stores "
        "valgrind's cache simulation does not see.");
  m.def("cachesim_replay",
        [](std::vector<int64_t> addr, std::vector<int64_t> bytes, std::vector<bool> write,
           std::vector<std::tuple<int64_t, int64_t, int64_t>> levels, bool reuse_histogram) {
          const Options o = options_from(levels, 0, reuse_histogram);
          return to_dict(replay(addr, bytes, write, o));
        },
        py::arg("addresses"), py::arg("sizes"), py::arg("writes"), py::arg("levels"),
        py::arg("reuse_histogram") = false, "Replay raw byte addresses through an LRU hierarchy.");
  m.def("cachesim_record",
        [](const std::string& algo, py::dict geometry, std::map<std::string, int64_t> blocking,
           int64_t unit_begin, int64_t unit_end, int64_t max_records, const std::string& isa) {
          return record(algo, geometry_from(geometry), blocking, parse_sim_isa(isa), unit_begin, unit_end,
                        max_records);
        },
        py::arg("algo"), py::arg("geometry"), py::arg("blocking"), py::arg("unit_begin"),
        py::arg("unit_end"), py::arg("max_records"), py::arg("isa") = "avx2",
        "Rows (operand, element offset, bytes, is_write) of the first accesses of some work units.");
  m.def("cachesim_operands", [] {
    std::vector<std::string> v;
    for (int op = 0; op < kNumOperands; ++op) v.push_back(operand_name(op));
    return v;
  });
  m.def("read_bandwidth_gbs", &read_bandwidth_gbs, py::arg("bytes"), py::arg("reps"),
        "Best-of-5 read bandwidth (GB/s) summing a buffer of `bytes` `reps` times.");
}

}  // namespace cachesim
}  // namespace fastconv
#endif  // FASTCONV_CACHESIM_STANDALONE
