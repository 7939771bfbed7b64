// Skinny products for decoding: C[m, n] (+)= Σ_k A[m, k]·B[n, k] (the NT layout, B a weight
// stored [out, in]) when m is at most GEMV_MAX_ROWS. The tiled GEMM (gemm.cu) covers 128 rows
// of C per block, so at m = 1..8 it launches only n/128 blocks and most of the GPU waits; a
// decode step's products are bound by reading B once (2·n·k bytes), not by arithmetic.
//
// Bytes in flight. By Little's law an H100 (~3.35 TB/s, ~700 ns from load to use, 132 SMs)
// needs ~18 KB of loads outstanding per SM to stream at full bandwidth. Here each warp owns
// GEMV_COLS = 2 output columns and each lane issues GEMV_UNROLL = 4 16-byte loads per column
// (8 independent loads, 128 bytes) before using any: 4 KB per warp, 32 KB per block of 8
// warps. The grid has ⌈n/16⌉ blocks: 256 at n = 4096 (~15.5 warps and ~62 KB in flight per
// SM, every block resident at once), 768 at 12288 (fused QKV), 688 at 11008, 1376 at 22016
// (fused gate/up), 2000 at 32000 (the LM head). B streams through L1 without allocating in it
// (ld.global.nc.L1::no_allocate) so that A's rows, which every warp on the SM reads again,
// stay there.
//
// Each lane sums its chunks in order and the warp reduces by shuffles in a fixed order, so the
// result is deterministic (and independent of the row-count variant chosen). Variants _r1,
// _r2, _r4, _r8 keep exactly as many accumulators as rows (m ≤ R). Needs k % 8 == 0 and
// 16-byte aligned A and B (gemm.rs checks and otherwise uses the tiled kernel). CPU reference:
// tests/cuda_kernels/gemm.rs.
//
// norm_gemv_nt_*: the norm before a decode product (RMSNorm with weight g, or OLMo's LayerNorm)
// inside it. Each block normalises the M ≤ 8 f32 residual rows into shared memory (bf16, 2·M·K
// bytes) with decode.cu's norm_rows arithmetic, then runs the loop above over them: the same
// bits as model_norm_bf16 then gemv_nt, one launch and no bf16 copy in memory. The cost is each
// block reading x (4·M·K bytes) and g (4·K) from L2: at M = 1, K = 4096, 32 KB beside the 128 KB
// of weights a block streams; its warps' first weight loads are issued before the norm. Tests:
// tests/cuda_kernels/norm_gemv.rs.
#include "common.cuh"

#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 8
#define GEMV_COLS 2
#define GEMV_UNROLL 4

namespace gemv {

// A 16-byte load of a weight row that is read once per product: no L1 allocation.
__device__ __forceinline__ uint4 load_stream(const bf16* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// A 16-byte load of an input row (read by every warp of the SM: cached).
__device__ __forceinline__ uint4 load_cached(const bf16* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// bf16 → f32 of the low and the high half of a 32-bit word (exact: a shift).
__device__ __forceinline__ float lo(unsigned int u) { return __uint_as_float(u << 16); }
__device__ __forceinline__ float hi(unsigned int u) { return __uint_as_float(u & 0xffff0000u); }

// acc += Σ of the 8 products of x and w, in element order.
__device__ __forceinline__ float dot8(const uint4& x, const uint4& w, float acc) {
  acc = fmaf(lo(x.x), lo(w.x), acc);
  acc = fmaf(hi(x.x), hi(w.x), acc);
  acc = fmaf(lo(x.y), lo(w.y), acc);
  acc = fmaf(hi(x.y), hi(w.y), acc);
  acc = fmaf(lo(x.z), lo(w.z), acc);
  acc = fmaf(hi(x.z), hi(w.z), acc);
  acc = fmaf(lo(x.w), lo(w.w), acc);
  acc = fmaf(hi(x.w), hi(w.w), acc);
  return acc;
}

// One group of GEMV_UNROLL chunk rounds starting at chunk c0 (a chunk is 8 values, 16 bytes):
// the lane's chunks c0 + 32u + lane. FULL: every chunk is inside the row (no checks).
// Every load of the group first: 8 independent 16-byte loads in flight per lane.
template <bool FULL>
__device__ __forceinline__ void load_group(const bf16* const (&b)[GEMV_COLS], int chunks, int c0,
                                           int lane, uint4 (&w)[GEMV_COLS][GEMV_UNROLL]) {
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; ++u) {
    const int chunk = c0 + 32 * u + lane;
#pragma unroll
    for (int c = 0; c < GEMV_COLS; ++c) {
      if (FULL || chunk < chunks)
        w[c][u] = load_stream(b[c] + (size_t)chunk * 8);
      else
        w[c][u] = make_uint4(0, 0, 0, 0);
    }
  }
}

// The products of the group loaded by load_group with A's rows (row stride K), in chunk order.
// SHARED: A is the normalised copy in shared memory (norm_gemv_nt); else global, cached.
template <int R, bool FULL, bool SHARED>
__device__ __forceinline__ void dot_group(const bf16* __restrict__ A,
                                          const uint4 (&w)[GEMV_COLS][GEMV_UNROLL], int M, int K,
                                          int chunks, int c0, int lane,
                                          float (&acc)[R][GEMV_COLS]) {
#pragma unroll
  for (int u = 0; u < GEMV_UNROLL; ++u) {
    const int chunk = c0 + 32 * u + lane;
    if (!FULL && chunk >= chunks) continue;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r < M) {
        const bf16* p = A + (size_t)r * K + (size_t)chunk * 8;
        uint4 x;
        if constexpr (SHARED)
          x = *reinterpret_cast<const uint4*>(p);
        else
          x = load_cached(p);
#pragma unroll
        for (int c = 0; c < GEMV_COLS; ++c) acc[r][c] = dot8(x, w[c][u], acc[r][c]);
      }
    }
  }
}

template <int R, bool FULL>
__device__ __forceinline__ void chunk_group(const bf16* __restrict__ A,
                                            const bf16* const (&b)[GEMV_COLS], int M, int K,
                                            int chunks, int c0, int lane,
                                            float (&acc)[R][GEMV_COLS]) {
  uint4 w[GEMV_COLS][GEMV_UNROLL];
  load_group<FULL>(b, chunks, c0, lane, w);
  dot_group<R, FULL, false>(A, w, M, K, chunks, c0, lane, acc);
}

// The rows of B that a warp's columns col0.. read; a column past N reads column col0's row
// again (always valid) and is not written.
__device__ __forceinline__ void column_rows(const bf16* __restrict__ B, int col0, int N, int K,
                                            const bf16* (&b)[GEMV_COLS]) {
#pragma unroll
  for (int c = 0; c < GEMV_COLS; ++c) b[c] = B + (size_t)(col0 + c < N ? col0 + c : col0) * K;
}

// The warp's sums by shuffles in a fixed order, and lane 0 writes (or adds) them.
template <int R, typename OutT>
__device__ __forceinline__ void store_columns(float (&acc)[R][GEMV_COLS], OutT* __restrict__ C,
                                              int M, int N, int col0, int lane, int accumulate) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < GEMV_COLS; ++c) {
      float v = acc[r][c];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && r < M && col0 + c < N) {
        OutT* out = C + (size_t)r * N + col0 + c;
        *out = from_float<OutT>(accumulate ? to_float(*out) + v : v);
      }
    }
  }
}

template <int R, typename OutT>
__device__ __forceinline__ void gemv_nt(const bf16* __restrict__ A, const bf16* __restrict__ B,
                                        OutT* __restrict__ C, int M, int N, int K,
                                        int accumulate) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int batch = blockIdx.z;
  A += (size_t)batch * M * K;
  B += (size_t)batch * N * K;
  C += (size_t)batch * M * N;
  const int chunks = K / 8;
  constexpr int GROUP = 32 * GEMV_UNROLL;  // chunks per group, over the warp
  const int full_end = chunks / GROUP * GROUP;
  const int cols_per_grid = gridDim.x * GEMV_WARPS * GEMV_COLS;
  for (int col0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_COLS; col0 < N; col0 += cols_per_grid) {
    const bf16* b[GEMV_COLS];
    column_rows(B, col0, N, K, b);
    float acc[R][GEMV_COLS];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < GEMV_COLS; ++c) acc[r][c] = 0.0f;
    for (int c0 = 0; c0 < full_end; c0 += GROUP)
      chunk_group<R, true>(A, b, M, K, chunks, c0, lane, acc);
    if (full_end < chunks) chunk_group<R, false>(A, b, M, K, chunks, full_end, lane, acc);
    store_columns<R, OutT>(acc, C, M, N, col0, lane, accumulate);
  }
}

// xs[r, :] = bf16(norm(x[rows[r], :])) for r < M, into shared memory (row stride K), with the
// arithmetic of decode.cu's norm_rows statement for statement (each thread's strided partial
// sums in index order, block_sum over the block's 256 threads = norm_rows' ROW_THREADS, the same
// expressions for the statistics and the scaling, one rounding to nearest even), so that the
// copy equals model_norm_bf16's output bit for bit; the rows' sums are interleaved only to keep
// M rows' loads in flight at once. A row ≥ x_rows gives NaN (and x is not read there), as
// there. layer_norm = 0: x·r·g, r = 1/sqrt(mean(x²) + eps); 1: (x − mean)/sqrt(var + eps).
template <int R>
__device__ __forceinline__ void norm_into_shared(const float* __restrict__ x, int x_rows,
                                                 const unsigned int* __restrict__ rows,
                                                 const float* __restrict__ g, int M, int K,
                                                 float eps, int layer_norm, bf16* xs,
                                                 float* scratch) {
  const float* xr[R];
  bool valid[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const unsigned int row = r < M ? rows[r] : 0u;
    valid[r] = r < M && row < (unsigned int)x_rows;
    xr[r] = x + (size_t)(valid[r] ? row : 0u) * K;
  }
  float inv[R], mean[R];
#pragma unroll
  for (int r = 0; r < R; ++r) mean[r] = 0.0f;
  if (layer_norm) {
    float s[R];
#pragma unroll
    for (int r = 0; r < R; ++r) s[r] = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < M) s[r] += xr[r][i];
    }
    block_sum<float, R>(s, scratch);
#pragma unroll
    for (int r = 0; r < R; ++r) mean[r] = s[r] / (float)K;
    float v[R];
#pragma unroll
    for (int r = 0; r < R; ++r) v[r] = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
#pragma unroll
      for (int r = 0; r < R; ++r) {
        if (r < M) {
          const float c = xr[r][i] - mean[r];
          v[r] += c * c;
        }
      }
    }
    block_sum<float, R>(v, scratch);
#pragma unroll
    for (int r = 0; r < R; ++r) inv[r] = 1.0f / sqrtf(v[r] / (float)K + eps);
  } else {
    float ss[R];
#pragma unroll
    for (int r = 0; r < R; ++r) ss[r] = 0.0f;
    for (int i = threadIdx.x; i < K; i += blockDim.x) {
#pragma unroll
      for (int r = 0; r < R; ++r)
        if (r < M) ss[r] += xr[r][i] * xr[r][i];
    }
    block_sum<float, R>(ss, scratch);
#pragma unroll
    for (int r = 0; r < R; ++r) inv[r] = 1.0f / sqrtf(ss[r] / (float)K + eps);
  }
  for (int i = threadIdx.x; i < K; i += blockDim.x) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (r < M) {
        float y = NAN;
        if (valid[r]) y = layer_norm ? (xr[r][i] - mean[r]) * inv[r] : xr[r][i] * inv[r] * g[i];
        xs[(size_t)r * K + i] = from_float<bf16>(y);
      }
    }
  }
  __syncthreads();
}

// C (+)= norm(x[rows])·Bᵀ: norm_into_shared, then gemv_nt's loop with A read from shared memory.
// The same bf16 inputs in the same order of operations as model_norm_bf16 then gemv_nt, so the
// same bits. Each block normalises the M rows itself (4·M·K bytes of x, and 4·K of g, from L2);
// its warps' first weight loads go out before that, so the norm's latency hides behind them.
template <int R, typename OutT>
__device__ __forceinline__ void norm_gemv_nt(const float* __restrict__ x, int x_rows,
                                             const unsigned int* __restrict__ rows,
                                             const float* __restrict__ g, float eps,
                                             int layer_norm, const bf16* __restrict__ B,
                                             OutT* __restrict__ C, int M, int N, int K,
                                             int accumulate) {
  extern __shared__ uint4 norm_gemv_shared[];
  __shared__ float scratch[32 * R];
  bf16* xs = reinterpret_cast<bf16*>(norm_gemv_shared);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int chunks = K / 8;
  constexpr int GROUP = 32 * GEMV_UNROLL;
  const int cols_per_grid = gridDim.x * GEMV_WARPS * GEMV_COLS;
  int col0 = (blockIdx.x * GEMV_WARPS + warp) * GEMV_COLS;
  const bf16* b[GEMV_COLS];
  uint4 w[GEMV_COLS][GEMV_UNROLL];
  column_rows(B, col0 < N ? col0 : 0, N, K, b);
  // The first group in flight during the norm (chunks ≥ 1: the host checks K ≥ 8).
  const bool prefetched = col0 < N;
  if (prefetched) {
    if (GROUP <= chunks)
      load_group<true>(b, chunks, 0, lane, w);
    else
      load_group<false>(b, chunks, 0, lane, w);
  }
  norm_into_shared<R>(x, x_rows, rows, g, M, K, eps, layer_norm, xs, scratch);
  for (bool first = true; col0 < N; col0 += cols_per_grid, first = false) {
    if (!first) column_rows(B, col0, N, K, b);
    float acc[R][GEMV_COLS];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int c = 0; c < GEMV_COLS; ++c) acc[r][c] = 0.0f;
    for (int c0 = 0; c0 < chunks; c0 += GROUP) {
      const bool full = c0 + GROUP <= chunks;
      const bool loaded = first && c0 == 0;
      if (full) {
        if (!loaded) load_group<true>(b, chunks, c0, lane, w);
        dot_group<R, true, true>(xs, w, M, K, chunks, c0, lane, acc);
      } else {
        if (!loaded) load_group<false>(b, chunks, c0, lane, w);
        dot_group<R, false, true>(xs, w, M, K, chunks, c0, lane, acc);
      }
    }
    store_columns<R, OutT>(acc, C, M, N, col0, lane, accumulate);
  }
}

}  // namespace gemv

// Launch: block 32·GEMV_WARPS, grid (⌈n / (GEMV_WARPS·GEMV_COLS)⌉, 1, batch); the _rR variant
// with the fewest rows R ≥ m.
#define GEMV_KERNEL(R, OutT, SUF)                                                             \
  extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)                                \
      gemv_nt_##SUF##_r##R(const bf16* __restrict__ A, const bf16* __restrict__ B,             \
                           OutT* __restrict__ C, int M, int N, int K, int accumulate) {        \
    gemv::gemv_nt<R, OutT>(A, B, C, M, N, K, accumulate);                                      \
  }

// HOT: gemv_nt_bf16_r1 gemv_nt_bf16_r2 gemv_nt_bf16_r4 gemv_nt_bf16_r8
// HOT: gemv_nt_f32_r1 gemv_nt_f32_r2 gemv_nt_f32_r4 gemv_nt_f32_r8
GEMV_KERNEL(1, bf16, bf16)
GEMV_KERNEL(2, bf16, bf16)
GEMV_KERNEL(4, bf16, bf16)
GEMV_KERNEL(8, bf16, bf16)
GEMV_KERNEL(1, float, f32)
GEMV_KERNEL(2, float, f32)
GEMV_KERNEL(4, float, f32)
GEMV_KERNEL(8, float, f32)

// Launch: as GEMV_KERNEL (batch 1), dynamic shared memory 2·M·K bytes (the normalised rows).
// At least 2 blocks per SM: without it ptxas keeps _r4 and _r8 at 64 and 80 registers and spills
// the first group's weights, held across the norm (with it: 63-108 registers, no spills).
#define NORM_GEMV_KERNEL(R, OutT, SUF)                                                        \
  extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS, 2) norm_gemv_nt_##SUF##_r##R(     \
      const float* __restrict__ x, int x_rows, const unsigned int* __restrict__ rows,          \
      const float* __restrict__ g, float eps, int layer_norm, const bf16* __restrict__ B,      \
      OutT* __restrict__ C, int M, int N, int K, int accumulate) {                             \
    gemv::norm_gemv_nt<R, OutT>(x, x_rows, rows, g, eps, layer_norm, B, C, M, N, K,            \
                                accumulate);                                                   \
  }

// HOT: norm_gemv_nt_bf16_r1 norm_gemv_nt_bf16_r2 norm_gemv_nt_bf16_r4 norm_gemv_nt_bf16_r8
// HOT: norm_gemv_nt_f32_r1 norm_gemv_nt_f32_r2 norm_gemv_nt_f32_r4 norm_gemv_nt_f32_r8
NORM_GEMV_KERNEL(1, bf16, bf16)
NORM_GEMV_KERNEL(2, bf16, bf16)
NORM_GEMV_KERNEL(4, bf16, bf16)
NORM_GEMV_KERNEL(8, bf16, bf16)
NORM_GEMV_KERNEL(1, float, f32)
NORM_GEMV_KERNEL(2, float, f32)
NORM_GEMV_KERNEL(4, float, f32)
NORM_GEMV_KERNEL(8, float, f32)
