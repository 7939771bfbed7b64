// Tensor-core products for decode batches: C[m, n] (+)= Σ_k A[m, k]·B[n, k] (the NT layout, B a
// weight stored [out, in]) for 8 < m ≤ 256 rows, bf16 in, f32 accumulation, f32 or bf16 out
// (round to nearest even), batch 1. CPU reference: tests/cuda_kernels/gemm_skinny.rs (f64).
//
// Why: at such m the product is bound by reading B once (2·n·k bytes: 32 MB for 4096×4096),
// not by its FLOPs (at m = 64 a 4096² product is 2.1 GFLOP: ~5 µs of mma.sync against ~11 µs
// of HBM), but the 128×128 (gemm.cu) and 128×256 (gemm_wgmma.cu) tiles waste most of their
// rows and launch n/128 blocks, 32 for n = 4096 on 132 SMs.
//
// Scheme:
// - Roles swapped: the block computes Cᵀ = B·Aᵀ, so the weight rows are the mma's 16-row M side
//   and the activation rows its 8-wide N side: m is padded to 8 per warp tile, not to 16.
//   Both operands are K-major in memory and in shared memory; plain ldmatrix.x4 feeds
//   mma.sync.m16n8k16.row.col (sm_80 and sm_90).
// - A block owns BN = 128 weight rows (output columns) and MTILE ∈ {16, 32, 64, 128} activation
//   rows (m > 128 takes two blocks per weight slab, adjacent in blockIdx.x so the second read of
//   the slab hits L2). 8 warps as 4 (weight rows, 32 each) × 2 (activation rows, MTILE/2 each).
// - K advances BK = 64 a step through a STAGES-deep ring of shared tiles filled by cp.async.cg
//   16-byte copies (L1 bypassed), STAGES−1 steps ahead of the math. Rows padded by 16 bytes
//   (144-byte stride: the 8 rows of an 8×8 ldmatrix fall in distinct 4-bank groups).
// - Bytes in flight (Little's law): saturating HBM3 needs ~3.35 TB/s × ~700 ns ≈ 2.3 MB in
//   flight over the GPU, ~18 KB per SM of 132. One B stage is 128 × 64 × 2 = 16 KB; a block keeps
//   STAGES−1 = 3 of them in flight (48 KB), and for MTILE ≤ 64 two blocks fit per SM (≤ 108 KiB
//   of shared memory each on sm_90; MTILE = 128 takes one of 144 KiB): 48–96 KB of weights in
//   flight per SM, 2.7–5× the minimum, room for the latency's growth under load.
// - Split-K when the weight slabs alone would leave SMs idle: the host picks `splits` so that
//   slabs × splits ≈ the blocks resident at once (gridDim.y = splits, each a contiguous range of
//   K steps). Each split writes its f32 partial tile to the workspace in fragment order
//   (coalesced), then counts itself in the tile's counter; the last split to arrive adds the
//   partials in split order 0, 1, … (its own from registers), so the sum and the result are the
//   same bits whatever the arrival order (deterministic), resets the counter to 0 for the next
//   launch and writes C. One launch, no second pass; the partials stay in L2.
// - Edges: chunks past N (weight rows), past M (activation rows) or past K are copied with
//   src-size 0 (zero fill); K must be a multiple of 8 and A, B 16-byte aligned (the host checks).
//   The epilogue writes only rows < M and columns < N; with `accumulate` it reads C, adds in f32
//   and rounds once.
//
// Fragment layouts (PTX ISA "Matrix fragments for mma.m16n8k16", g = lane/4, t = lane%4), with
// W = the weight tile (mma A, 16 rows × 16 k) and X = the activation tile (mma B, 8 rows × 16 k):
//   a0 = W[g][2t..], a1 = W[g+8][2t..], a2 = W[g][2t+8..], a3 = W[g+8][2t+8..]
//   b0 = X[g][2t..], b1 = X[g][2t+8..]
//   d0, d1 = Cᵀ[g][2t, 2t+1] = C[2t][g], C[2t+1][g];  d2, d3 = the same at weight row g+8.
#include "common.cuh"
#include "mma_sm80.cuh"

namespace skinny {

constexpr int BN = 128, BK = 64, THREADS = 256;
constexpr int PAD = 8, LD = BK + PAD;  // shared row: 72 elements, 144 bytes
constexpr int WARPS_N = 4, WARPS_M = 2;
constexpr int WARP_N = BN / WARPS_N;  // 32 weight rows per warp: two m16 tiles
constexpr int WT = WARP_N / 16;       // m16 tiles (of weight rows) per warp
constexpr int KK = BK / 16;           // k16 steps per stage
static_assert(WARPS_N * WARPS_M * 32 == THREADS, "8 warps");

template <int MTILE>
struct Cfg {
  static constexpr int STAGES = 4;
  // Two blocks per SM below 128 rows; at 128 the 64 accumulators per thread need more than
  // the 128 registers two blocks leave (ptxas spilled 236 bytes), so one block of 144 KiB.
  static constexpr int MIN_BLOCKS = MTILE == 128 ? 1 : 2;
  static constexpr int WARP_M = MTILE / WARPS_M;  // activation rows per warp: 8..64
  static constexpr int N8 = WARP_M / 8;           // n8 tiles per warp: 1..8
  static constexpr int B_STAGE = BN * LD * 2;     // bytes of one weight stage
  static constexpr int A_STAGE = MTILE * LD * 2;  // bytes of one activation stage
  static constexpr int SMEM = STAGES * (B_STAGE + A_STAGE);
  static constexpr int ACC = WT * N8 * 4;  // f32 accumulators per thread
  static constexpr int B_CHUNKS = BN * BK / 8 / THREADS;                // 4 per thread
  static constexpr int A_CHUNKS = (MTILE * BK / 8 + THREADS - 1) / THREADS;  // 1..4
};

using namespace sm80;

// Copies the K step `step` of `rows_total` × K (K-major) rows [row0, row0 + TILE_ROWS) into the
// shared tile at byte address `tile`: 8 chunks of 16 bytes per row, chunk c of the tile at
// (row c/8, k (c%8)·8), thread tid taking chunks tid, tid + 256, …
template <int TILE_ROWS, int CHUNKS>
__device__ __forceinline__ void load_tile(uint32_t tile, const bf16* __restrict__ base,
                                          int rows_total, int row0, int K, int step, int tid) {
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int chunk = tid + c * THREADS;
    if (TILE_ROWS * BK / 8 % THREADS != 0 && chunk >= TILE_ROWS * BK / 8) break;
    const int r = chunk >> 3, kc = (chunk & 7) * 8;
    const int row = row0 + r, k = step * BK + kc;
    // K % 8 == 0: a chunk is wholly inside or wholly outside.
    const bool ok = row < rows_total && k < K;
    const bf16* src = ok ? base + (size_t)row * K + k : base;
    cp_async16(tile + (r * LD + kc) * 2, src, ok ? 16 : 0);
  }
}

template <typename OutT>
__device__ __forceinline__ void store_one(OutT* p, float v, bool accumulate) {
  *p = from_float<OutT>(accumulate ? to_float(*p) + v : v);
}

template <int MTILE, typename OutT>
__device__ __forceinline__ void skinny_block(const bf16* __restrict__ A, const bf16* __restrict__ B,
                                             OutT* __restrict__ C, float* __restrict__ partials,
                                             unsigned* __restrict__ counters, int M, int N, int K,
                                             int steps_per_split, int accumulate) {
  using Cf = Cfg<MTILE>;
  constexpr int STAGES = Cf::STAGES, N8 = Cf::N8;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ int is_last;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_n = warp % WARPS_N, warp_m = warp / WARPS_N;

  const int tiles_m = (M + MTILE - 1) / MTILE;
  const int tile = blockIdx.x;
  const int tile_m = tile % tiles_m, tile_n = tile / tiles_m;
  const int n0 = tile_n * BN, m0 = tile_m * MTILE;
  const int split = blockIdx.y, splits = gridDim.y;
  const int k_steps = (K + BK - 1) / BK;
  const int step0 = split * steps_per_split;
  const int steps = max(0, min(k_steps - step0, steps_per_split));

  const uint32_t sB = smem_addr(smem);
  const uint32_t sA = sB + STAGES * Cf::B_STAGE;

  // Per-lane ldmatrix byte offsets inside a stage (k16 step 0, first tile of the warp).
  // W (mma A): lane l → weight row l%16, k half l/16 (matrices: rows 0–7|8–15 × k 0–7|8–15).
  const uint32_t w_off = ((warp_n * WARP_N + (lane & 15)) * LD + (lane >> 4) * 8) * 2;
  // X (mma B): matrix q = lane/8 → activation rows (q/2)·8 + lane%8, k half q%2: regs b0, b1
  // of n8 tile 2j, then of 2j + 1.
  const uint32_t x_off =
      ((warp_m * Cf::WARP_M + (lane & 7) + (lane >> 4) * 8) * LD + ((lane >> 3) & 1) * 8) * 2;

  float acc[WT][N8][4];
#pragma unroll
  for (int i = 0; i < WT; ++i)
#pragma unroll
    for (int j = 0; j < N8; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  // Prologue: steps 0 .. STAGES−2 in flight, one commit group each (empty past the end).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < steps) {
      load_tile<BN, Cf::B_CHUNKS>(sB + s * Cf::B_STAGE, B, N, n0, K, step0 + s, tid);
      load_tile<MTILE, Cf::A_CHUNKS>(sA + s * Cf::A_STAGE, A, M, m0, K, step0 + s, tid);
    }
    cp_async_commit();
  }

  int read_stage = 0, write_stage = STAGES - 1;
  for (int it = 0; it < steps; ++it) {
    // Step `it` has landed; the barrier also tells every warp that the stage written next
    // (read at it − 1) is free.
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int next = it + STAGES - 1;
    if (next < steps) {
      load_tile<BN, Cf::B_CHUNKS>(sB + write_stage * Cf::B_STAGE, B, N, n0, K, step0 + next, tid);
      load_tile<MTILE, Cf::A_CHUNKS>(sA + write_stage * Cf::A_STAGE, A, M, m0, K, step0 + next,
                                     tid);
    }
    cp_async_commit();
    write_stage = write_stage == STAGES - 1 ? 0 : write_stage + 1;

    const uint32_t tW = sB + read_stage * Cf::B_STAGE + w_off;
    const uint32_t tX = sA + read_stage * Cf::A_STAGE + x_off;
    read_stage = read_stage == STAGES - 1 ? 0 : read_stage + 1;
#pragma unroll
    for (int kk = 0; kk < KK; ++kk) {
      uint32_t w[WT][4];
#pragma unroll
      for (int i = 0; i < WT; ++i) ldmatrix_x4(w[i], tW + (i * 16 * LD + kk * 16) * 2);
      // One pair of n8 tiles of X at a time: 4 registers live, not 2·N8 (m128 fits 128).
#pragma unroll
      for (int jp = 0; jp < (N8 + 1) / 2; ++jp) {
        uint32_t x[4];
        const uint32_t addr = tX + (jp * 16 * LD + kk * 16) * 2;
        if (N8 == 1)
          ldmatrix_x2(x, addr);
        else
          ldmatrix_x4(x, addr);
#pragma unroll
        for (int i = 0; i < WT; ++i)
#pragma unroll
          for (int h = 0; h < 2 && 2 * jp + h < N8; ++h)
            mma_bf16(acc[i][2 * jp + h], w[i], x[2 * h], x[2 * h + 1]);
      }
    }
  }
  cp_async_wait<0>();  // only empty groups remain; leave nothing in flight at exit

  if (splits > 1) {
    // This split's partial tile, in fragment order: value e of thread tid at
    // [(split·tiles + tile)·ACC + e]·THREADS + tid, so each warp's store is 128 contiguous bytes.
    const size_t tiles = gridDim.x;
    float* mine = partials + ((size_t)split * tiles + tile) * Cf::ACC * THREADS + tid;
#pragma unroll
    for (int i = 0; i < WT; ++i)
#pragma unroll
      for (int j = 0; j < N8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) __stcg(mine + ((i * N8 + j) * 4 + e) * THREADS, acc[i][j][e]);
    __threadfence();  // the partial is visible GPU-wide before the count says so
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(counters + tile, 1u) == (unsigned)(splits - 1);
    __syncthreads();
    if (!is_last) return;
    __threadfence();  // the other splits' partials, counted before, are read after
    // Sum in split order whatever the arrival order: the same bits on every run.
#pragma unroll
    for (int i = 0; i < WT; ++i)
#pragma unroll
      for (int j = 0; j < N8; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int idx = (i * N8 + j) * 4 + e;
          float sum = 0.0f;
          for (int s = 0; s < splits; ++s) {
            const float p = s == split ? acc[i][j][e]
                                       : __ldcg(partials + ((size_t)s * tiles + tile) * Cf::ACC *
                                                               THREADS +
                                                idx * THREADS + tid);
            sum += p;
          }
          acc[i][j][e] = sum;
        }
    if (tid == 0) counters[tile] = 0;  // ready for the next launch (kernel order on the stream)
  }

  // Epilogue: d0, d1 → C[2t][g], C[2t + 1][g]; d2, d3 → the same at weight row g + 8.
  const int g = lane >> 2, t = lane & 3;
  const bool acc_on = accumulate != 0;
#pragma unroll
  for (int i = 0; i < WT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int col = n0 + warp_n * WARP_N + i * 16 + g + h * 8;
      if (col >= N) continue;
#pragma unroll
      for (int j = 0; j < N8; ++j) {
        const int row = m0 + warp_m * Cf::WARP_M + j * 8 + 2 * t;
        if (row < M) store_one(C + (size_t)row * N + col, acc[i][j][2 * h], acc_on);
        if (row + 1 < M) store_one(C + (size_t)(row + 1) * N + col, acc[i][j][2 * h + 1], acc_on);
      }
    }
  }
}

}  // namespace skinny

// One kernel per (activation rows per block, output type). Launch: block 256, grid
// (⌈N/128⌉·⌈M/MTILE⌉, splits), dynamic shared memory gemm_skinny.rs's `smem_bytes` (needs the
// opt-in above 48 KiB); `partials` holds splits·⌈N/128⌉·⌈M/MTILE⌉·128·MTILE floats and
// `counters` one zeroed word per block of blockIdx.x when splits > 1 (unused otherwise).
#define SKINNY_KERNEL(NAME, MTILE, OUT)                                                       \
  extern "C" __global__ void __launch_bounds__(skinny::THREADS,                               \
                                               skinny::Cfg<MTILE>::MIN_BLOCKS)                \
      NAME(const bf16* __restrict__ A, const bf16* __restrict__ B, OUT* __restrict__ C,       \
           float* __restrict__ partials, unsigned* __restrict__ counters, int M, int N, int K, \
           int steps_per_split, int accumulate) {                                             \
    skinny::skinny_block<MTILE, OUT>(A, B, C, partials, counters, M, N, K, steps_per_split,   \
                                     accumulate);                                             \
  }

// HOT: gemm_skinny_m16_bf16 gemm_skinny_m16_f32 gemm_skinny_m32_bf16 gemm_skinny_m32_f32
// HOT: gemm_skinny_m64_bf16 gemm_skinny_m64_f32 gemm_skinny_m128_bf16 gemm_skinny_m128_f32
SKINNY_KERNEL(gemm_skinny_m16_bf16, 16, bf16)
SKINNY_KERNEL(gemm_skinny_m16_f32, 16, float)
SKINNY_KERNEL(gemm_skinny_m32_bf16, 32, bf16)
SKINNY_KERNEL(gemm_skinny_m32_f32, 32, float)
SKINNY_KERNEL(gemm_skinny_m64_bf16, 64, bf16)
SKINNY_KERNEL(gemm_skinny_m64_f32, 64, float)
SKINNY_KERNEL(gemm_skinny_m128_bf16, 128, bf16)
SKINNY_KERNEL(gemm_skinny_m128_f32, 128, float)

static_assert(skinny::Cfg<16>::SMEM == 82944, "m16 shared bytes (gemm_skinny.rs)");
static_assert(skinny::Cfg<32>::SMEM == 92160, "m32 shared bytes (gemm_skinny.rs)");
static_assert(skinny::Cfg<64>::SMEM == 110592, "m64 shared bytes (gemm_skinny.rs)");
static_assert(skinny::Cfg<128>::SMEM == 147456, "m128 shared bytes (gemm_skinny.rs)");
