// bf16 GEMM on the tensor cores with fp32 accumulation, strided-batched, row-major everywhere:
//   NN  C[m,n] = Σ_k A[m,k]·B[k,n]            (A [M,K], B [K,N]: dX = dY·W)
//   NT  C[m,n] = Σ_k A[m,k]·B[n,k]            (A [M,K], B [N,K]: Y = X·Wᵀ, W stored [out,in])
//   TN  C[m,n] = Σ_k A[k,m]·B[k,n]            (A [K,M], B [K,N]: dW = dYᵀ·X)
// Batch b reads A + b·M·K, B + b·K·N and writes C + b·M·N (blockIdx.z). With `accumulate`,
// C ← C + A·B (read, added in f32, rounded once); otherwise C ← A·B. Output f32 or bf16
// (round to nearest even). Reference: tests/cuda_kernels/gemm.rs (f64 on the CPU) and cuBLAS.
//
// Scheme (the Ampere "multistage" GEMM, as CUTLASS's sm80 default and Triton's):
// - A block computes a BM×BN = 128×128 tile of C with 8 warps in a 2×4 grid; each warp owns
//   64×32 = 4×4 tiles of mma.sync.m16n8k16 (bf16 in, f32 accumulate): 64 f32 accumulators
//   per thread, kept in registers for the whole K loop.
// - K advances BK = 32 at a time through a STAGES = 4 deep ring of shared-memory tiles, filled
//   by cp.async.cg 16-byte copies (global → shared, bypassing L1 and registers) three tiles
//   ahead of the math: wait_group(STAGES−2) + one barrier per K step.
// - Each operand tile is stored in shared memory as it lies in global memory: "K-major" (the
//   K index contiguous: A of NN/NT, B of NT) as [128][BK] rows, "MN-major" (A of TN, B of
//   NN/TN) as [BK][128] rows. Fragments come out with ldmatrix.x4; an MN-major operand uses
//   ldmatrix.trans, which hands each thread the transpose, so every layout feeds the same
//   mma.row.col. Rows are padded by 16 bytes (80 B and 272 B strides): the 8 row addresses of
//   one 8×8 matrix then fall in 8 distinct 4-bank groups, so ldmatrix is conflict-free.
// - Edges: a 16-byte chunk outside the matrix is copied with src-size 0 (zero fill), so the
//   tail tiles in M, N and K add zeros. The 16-byte path needs the contiguous dimension of A
//   and of B to be a multiple of 8 and 16-byte-aligned bases (the host checks and otherwise
//   picks the `_scalar` kernels: the same tile and math, filled by bounds-checked 2-byte loads
//   through registers, for any M, N, K).
// - Epilogue: each thread writes its accumulators straight to C as pairs (c0,c1 at row g,
//   cols 2t..2t+1; c2,c3 at row g+8), 8- or 4-byte stores when N is even, scalar otherwise.
// - Block order: groups of 8 tile rows walk down the N tiles together (Triton's grouped order),
//   so the blocks resident at once share their A row-panels and B column-panels in L2.
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16", g = lane/4, t = lane%4):
//   A 16×16: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16×8:  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C 16×8:  c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// ldmatrix.x4: lanes 8j..8j+7 give the row addresses of matrix j; without .trans thread i
// gets row i/4, elements 2(i%4), 2(i%4)+1 of each matrix; with .trans the same of its transpose.
#include "common.cuh"
#include "mma_sm80.cuh"

namespace gemm {

constexpr int BM = 128, BN = 128, BK = 32, STAGES = 4, THREADS = 256;
constexpr int WARP_M = 64, WARP_N = 32;  // 2 × 4 warps
constexpr int MT = WARP_M / 16;           // m16 tiles per warp: 4
constexpr int NT = WARP_N / 8;            // n8 tiles per warp: 4
constexpr int PAD = 8;                    // 16 bytes of padding per shared row
constexpr int LD_K = BK + PAD;            // K-major tile [128][40]: 80-byte rows
constexpr int LD_MN = BM + PAD;           // MN-major tile [32][136]: 272-byte rows
constexpr int GROUP_M = 8;                // tile rows per group of the block order
static_assert(BM == BN, "one MN-major row length serves A and B");

template <bool KMAJ>
struct Tile {
  static constexpr int ELEMS = KMAJ ? BM * LD_K : BK * LD_MN;
  static constexpr int BYTES = ELEMS * 2;
  // 16-byte chunks of one tile: 128×32 or 32×128 elements = 512 chunks, 2 per thread.
  static constexpr int CHUNKS_PER_THREAD = BM * BK / 8 / THREADS;
};
static_assert(Tile<true>::CHUNKS_PER_THREAD == 2, "loader assumes 2 chunks per thread");

template <bool A_KMAJ, bool B_KMAJ>
constexpr int smem_bytes() {
  return STAGES * (Tile<A_KMAJ>::BYTES + Tile<B_KMAJ>::BYTES);
}

using namespace sm80;

// Copies of one operand's tiles into the ring. The operand is `rows` (M or N) × K, stored
// K-major ([rows][K], leading dimension K) or MN-major ([K][rows], leading dimension rows).
// Each thread owns two 16-byte chunks of every tile; its pointers advance by one BK step a tile.
template <bool KMAJ, bool VEC>
struct Loader {
  const unsigned short* src[2];  // the chunk's first element for the current k0
  uint32_t dst[2];               // byte offset of the chunk inside a stage's tile
  int inner[2];                  // k (K-major) or m/n (MN-major) offset of the chunk's column
  int outer[2];                  // m/n (K-major) or k (MN-major) offset of the chunk's row
  const unsigned short* base;
  int rows, K;
  long long step;  // elements the source advances per BK (BK·ld may pass 2³¹ for huge M or N)

  __device__ __forceinline__ Loader(const bf16* op, int rows_, int K_, int tile0, int tid) {
    base = reinterpret_cast<const unsigned short*>(op);
    rows = rows_;
    K = K_;
    const int ld = KMAJ ? K_ : rows_;
    step = KMAJ ? (long long)BK : (long long)BK * ld;
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int chunk = tid + c * THREADS;
      if (KMAJ) {
        const int r = chunk >> 2, kc = (chunk & 3) * 8;  // 4 chunks per 32-element row
        outer[c] = tile0 + r;
        inner[c] = kc;
        dst[c] = (r * LD_K + kc) * 2;
        src[c] = base + (size_t)outer[c] * ld + kc;
      } else {
        const int r = chunk >> 4, cc = (chunk & 15) * 8;  // 16 chunks per 128-element row
        outer[c] = r;
        inner[c] = tile0 + cc;
        dst[c] = (r * LD_MN + cc) * 2;
        src[c] = base + (size_t)r * ld + tile0 + cc;
      }
    }
  }

  // Fills the tile at shared byte address `tile` with the k0 = kt·BK step, then advances.
  __device__ __forceinline__ void load(uint32_t tile, int k0) {
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      // K-major: row outer[c] (of rows), columns k0 + inner[c] .. +8.
      // MN-major: row k0 + outer[c] (of K), columns inner[c] .. +8 (of rows).
      const int row = KMAJ ? outer[c] : k0 + outer[c];
      const int col = KMAJ ? k0 + inner[c] : inner[c];
      const int row_end = KMAJ ? rows : K;
      const int col_end = KMAJ ? K : rows;
      if (VEC) {
        // col_end is a multiple of 8 here: a chunk is wholly inside or wholly outside.
        const bool ok = row < row_end && col < col_end;
        cp_async16(tile + dst[c], ok ? src[c] : base, ok ? 16 : 0);
      } else {
        unsigned short v[8];
        const bool row_ok = row < row_end;
#pragma unroll
        for (int e = 0; e < 8; ++e) v[e] = (row_ok && col + e < col_end) ? src[c][e] : 0;
        const uint4 packed = make_uint4(v[0] | (uint32_t(v[1]) << 16), v[2] | (uint32_t(v[3]) << 16),
                                        v[4] | (uint32_t(v[5]) << 16), v[6] | (uint32_t(v[7]) << 16));
        asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};\n" ::"r"(tile + dst[c]),
                     "r"(packed.x), "r"(packed.y), "r"(packed.z), "r"(packed.w)
                     : "memory");
      }
      src[c] += step;
    }
  }
};

template <typename OutT>
__device__ __forceinline__ void store_pair(OutT* row, int col, int N, bool pair_ok, float v0,
                                           float v1, bool accumulate);

template <>
__device__ __forceinline__ void store_pair<float>(float* row, int col, int N, bool pair_ok,
                                                  float v0, float v1, bool accumulate) {
  if (pair_ok) {  // N even, col even and < N: an aligned float2
    float2* p = reinterpret_cast<float2*>(row + col);
    if (accumulate) {
      const float2 old = *p;
      v0 += old.x;
      v1 += old.y;
    }
    *p = make_float2(v0, v1);
  } else {
    if (col < N) row[col] = accumulate ? row[col] + v0 : v0;
    if (col + 1 < N) row[col + 1] = accumulate ? row[col + 1] + v1 : v1;
  }
}

template <>
__device__ __forceinline__ void store_pair<bf16>(bf16* row, int col, int N, bool pair_ok,
                                                 float v0, float v1, bool accumulate) {
  if (pair_ok) {
    __nv_bfloat162* p = reinterpret_cast<__nv_bfloat162*>(row + col);
    if (accumulate) {
      const float2 old = __bfloat1622float2(*p);
      v0 += old.x;
      v1 += old.y;
    }
    *p = __floats2bfloat162_rn(v0, v1);
  } else {
    if (col < N) row[col] = __float2bfloat16_rn(accumulate ? __bfloat162float(row[col]) + v0 : v0);
    if (col + 1 < N)
      row[col + 1] = __float2bfloat16_rn(accumulate ? __bfloat162float(row[col + 1]) + v1 : v1);
  }
}

template <bool A_KMAJ, bool B_KMAJ, bool VEC, typename OutT>
__device__ __forceinline__ void gemm_block(const bf16* __restrict__ A, const bf16* __restrict__ B,
                                           OutT* __restrict__ C, int M, int N, int K,
                                           int accumulate) {
  extern __shared__ __align__(16) unsigned char smem[];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int warp_m = warp >> 2, warp_n = warp & 3;

  // Grouped block order: GROUP_M tile rows share each column of tiles.
  const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
  const int pid = blockIdx.x, width = GROUP_M * tiles_n;
  const int first_m = (pid / width) * GROUP_M;
  const int group_rows = min(tiles_m - first_m, GROUP_M);
  const int tile_m = first_m + (pid % width) % group_rows;
  const int tile_n = (pid % width) / group_rows;
  const int m0 = tile_m * BM, n0 = tile_n * BN;

  const size_t batch = blockIdx.z;
  A += batch * (size_t)M * K;
  B += batch * (size_t)K * N;
  C += batch * (size_t)M * N;

  const uint32_t sA = smem_addr(smem);
  const uint32_t sB = sA + STAGES * Tile<A_KMAJ>::BYTES;
  Loader<A_KMAJ, VEC> la(A, M, K, m0, tid);
  Loader<B_KMAJ, VEC> lb(B, N, K, n0, tid);

  // Per-lane ldmatrix byte offsets inside a stage's tile (k step 0, first m/n tile); the m/n
  // tiles and the second k16 step add compile-time constants.
  const int q = lane >> 3, r = lane & 7;
  uint32_t a_off, b_off;
  if (A_KMAJ)  // matrices (m 0-7|8-15) × (k 0-7|8-15): lane l → row l%16, k (l/16)·8
    a_off = ((warp_m * WARP_M + (lane & 15)) * LD_K + (lane >> 4) * 8) * 2;
  else  // .trans from [k][m]: matrix q = (m half q%2, k half q/2), row k = r + (q/2)·8
    a_off = ((r + (q >> 1) * 8) * LD_MN + warp_m * WARP_M + (q & 1) * 8) * 2;
  if (B_KMAJ)  // from [n][k]: matrix q = (k half q%2, n half q/2): regs b0,b1 of two n8 tiles
    b_off = ((warp_n * WARP_N + r + (q >> 1) * 8) * LD_K + (q & 1) * 8) * 2;
  else  // .trans from [k][n]: matrix q = (k half q%2, n half q/2)
    b_off = ((r + (q & 1) * 8) * LD_MN + warp_n * WARP_N + (q >> 1) * 8) * 2;
  constexpr uint32_t A_MT_STEP = A_KMAJ ? 16 * LD_K * 2 : 16 * 2;  // next m16 tile
  constexpr uint32_t A_KK_STEP = A_KMAJ ? 16 * 2 : 16 * LD_MN * 2;  // next k16 step
  constexpr uint32_t B_NT_STEP = B_KMAJ ? 16 * LD_K * 2 : 16 * 2;  // next pair of n8 tiles
  constexpr uint32_t B_KK_STEP = B_KMAJ ? 16 * 2 : 16 * LD_MN * 2;

  float acc[MT][NT][4];
#pragma unroll
  for (int i = 0; i < MT; ++i)
#pragma unroll
    for (int j = 0; j < NT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

  const int k_tiles = (K + BK - 1) / BK;
  // Prologue: tiles 0 .. STAGES−2 in flight, one commit group each (empty past the end).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) {
      la.load(sA + s * Tile<A_KMAJ>::BYTES, s * BK);
      lb.load(sB + s * Tile<B_KMAJ>::BYTES, s * BK);
    }
    cp_async_commit();
  }

  int read_stage = 0, write_stage = STAGES - 1;
  for (int kt = 0; kt < k_tiles; ++kt) {
    // Tile kt has landed (at most STAGES−2 younger groups pending); the barrier also tells
    // every warp that the stage written next (read at kt−1) is free.
    cp_async_wait<STAGES - 2>();
    __syncthreads();
    const int next = kt + STAGES - 1;
    if (next < k_tiles) {
      la.load(sA + write_stage * Tile<A_KMAJ>::BYTES, next * BK);
      lb.load(sB + write_stage * Tile<B_KMAJ>::BYTES, next * BK);
    }
    cp_async_commit();
    write_stage = write_stage == STAGES - 1 ? 0 : write_stage + 1;

    const uint32_t tA = sA + read_stage * Tile<A_KMAJ>::BYTES + a_off;
    const uint32_t tB = sB + read_stage * Tile<B_KMAJ>::BYTES + b_off;
    read_stage = read_stage == STAGES - 1 ? 0 : read_stage + 1;
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t af[MT][4], bfr[NT / 2][4];
#pragma unroll
      for (int i = 0; i < MT; ++i) {
        const uint32_t addr = tA + i * A_MT_STEP + kk * A_KK_STEP;
        if (A_KMAJ)
          ldmatrix_x4(af[i], addr);
        else
          ldmatrix_x4_trans(af[i], addr);
      }
#pragma unroll
      for (int j = 0; j < NT / 2; ++j) {
        const uint32_t addr = tB + j * B_NT_STEP + kk * B_KK_STEP;
        if (B_KMAJ)
          ldmatrix_x4(bfr[j], addr);
        else
          ldmatrix_x4_trans(bfr[j], addr);
      }
#pragma unroll
      for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
          mma_bf16(acc[i][j], af[i], bfr[j / 2][(j & 1) * 2], bfr[j / 2][(j & 1) * 2 + 1]);
    }
  }
  cp_async_wait<0>();  // only empty groups remain; leave nothing in flight at exit

  // Epilogue: c0,c1 → row g, cols 2t, 2t+1; c2,c3 → row g+8.
  const int g = lane >> 2, t = lane & 3;
  const bool n_even = (N & 1) == 0;
  const bool acc_on = accumulate != 0;
#pragma unroll
  for (int i = 0; i < MT; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int row = m0 + warp_m * WARP_M + i * 16 + g + h * 8;
      if (row >= M) continue;
      OutT* crow = C + (size_t)row * N;
#pragma unroll
      for (int j = 0; j < NT; ++j) {
        const int col = n0 + warp_n * WARP_N + j * 8 + 2 * t;
        store_pair<OutT>(crow, col, N, n_even && col < N, acc[i][j][2 * h],
                         acc[i][j][2 * h + 1], acc_on);
      }
    }
  }
}

}  // namespace gemm

// One kernel per (layout, output type, path). Launch: block 256, grid (tiles_m·tiles_n, 1,
// batch), dynamic shared memory gemm_smem_bytes(layout) (≤ 80 KiB, needs the opt-in attribute).
#define GEMM_KERNEL(NAME, AK, BKM, VEC, OUT)                                                    \
  extern "C" __global__ void __launch_bounds__(gemm::THREADS, 2)                                \
      NAME(const bf16* __restrict__ A, const bf16* __restrict__ B, OUT* __restrict__ C, int M,  \
           int N, int K, int accumulate) {                                                      \
    gemm::gemm_block<AK, BKM, VEC, OUT>(A, B, C, M, N, K, accumulate);                          \
  }

// HOT: gemm_nn_bf16 gemm_nn_f32 gemm_nt_bf16 gemm_nt_f32 gemm_tn_bf16 gemm_tn_f32
// HOT: gemm_nn_bf16_scalar gemm_nn_f32_scalar gemm_nt_bf16_scalar gemm_nt_f32_scalar
// HOT: gemm_tn_bf16_scalar gemm_tn_f32_scalar
GEMM_KERNEL(gemm_nn_bf16, true, false, true, bf16)
GEMM_KERNEL(gemm_nn_f32, true, false, true, float)
GEMM_KERNEL(gemm_nt_bf16, true, true, true, bf16)
GEMM_KERNEL(gemm_nt_f32, true, true, true, float)
GEMM_KERNEL(gemm_tn_bf16, false, false, true, bf16)
GEMM_KERNEL(gemm_tn_f32, false, false, true, float)
GEMM_KERNEL(gemm_nn_bf16_scalar, true, false, false, bf16)
GEMM_KERNEL(gemm_nn_f32_scalar, true, false, false, float)
GEMM_KERNEL(gemm_nt_bf16_scalar, true, true, false, bf16)
GEMM_KERNEL(gemm_nt_f32_scalar, true, true, false, float)
GEMM_KERNEL(gemm_tn_bf16_scalar, false, false, false, bf16)
GEMM_KERNEL(gemm_tn_f32_scalar, false, false, false, float)

static_assert(gemm::smem_bytes<true, false>() == 75776, "NN shared bytes (gemm.rs)");
static_assert(gemm::smem_bytes<true, true>() == 81920, "NT shared bytes (gemm.rs)");
static_assert(gemm::smem_bytes<false, false>() == 69632, "TN shared bytes (gemm.rs)");
