// Flash attention (FlashAttention-2, Dao 2023): causal, grouped-query heads, head_dim 64 or 128,
// bf16 inputs and outputs, f32 accumulation on the tensor cores (mma.sync.m16n8k16, sm_80+).
// Reference: backend::cpu::attention::{causal_attention, causal_attention_backward}; tests in
// tests/cuda_kernels/attention.rs (f64 on the CPU). Host side:
// src/backend/cuda/flash_attention.rs.
//
// Layout (as the CPU reference, `batch` sequences of equal length one after the other):
//   q, out, d_out, dq  [batch, queries, heads, head_dim]
//   k, v, dk, dv       [batch, keys, kv_heads, head_dim]
//   lse, delta         [batch, heads, queries] f32 (natural log-sum-exp of the scaled scores)
// Query i sits at position keys − queries + i and sees keys 0..=that position (so prefill over a
// KV cache works too); query head h reads KV head h / (heads / kv_heads).
//
// Notation (FA-2 paper): S = τ·Q·Kᵀ with τ = 1/√d, P = softmax(S) row-wise, O = P·V,
// L = rowmax + log rowsum(exp) (the log-sum-exp). Scores are kept in base 2: s₂ = S·log₂e, so
// that exp(S − m) = exp2(s₂ − m₂) (one MUFU.EX2, no multiply by log₂e inside the exponent).
//
// Forward (FA-2 Algorithm 1), one block of 4 warps per (64-query tile, head, sequence):
// - Q_i (64 × d) is loaded once (cp.async → shared → ldmatrix) and kept in registers as mma
//   A-fragments; each warp owns 16 query rows.
// - For each key tile j = 0, 1, … (64 keys; tiles wholly above the diagonal are never visited,
//   the last one(s) are masked element-wise), K_j and V_j stream through a double-buffered
//   shared ring filled by cp.async (tile j+1 in flight while j is computed):
//     S_i^(j) = Q_i K_jᵀ                                     (mma, f32)
//     m_i^(j) = max(m_i^(j−1), rowmax(S_i^(j)))
//     P̃_i^(j) = exp(S_i^(j) − m_i^(j))                       (exp2 of base-2 scores)
//     ℓ_i^(j) = e^{m_i^(j−1) − m_i^(j)} ℓ_i^(j−1) + rowsum(P̃_i^(j))
//     O_i^(j) = diag(e^{m_i^(j−1) − m_i^(j)}) O_i^(j−1) + P̃_i^(j) V_j   (P̃ as bf16 A-fragments
//               straight from the S accumulators: the C layout of two n8 tiles is the A layout
//               of one k16 step)
// - O_i = diag(ℓ_i)^{-1} O_i^(last), L_i = m_i + log ℓ_i, written once.
//
// Backward (FA-2 Algorithm 2), three kernels:
// 1. flash_bwd_preprocess: D_i = rowsum(dO_i ∘ O_i) (one warp per row), and zeroes the f32 dQ
//    accumulator.
// 2. flash_bwd_hd{64,128}: one block of 4 warps per (64-key tile, KV head, sequence); each warp
//    owns 16 keys and keeps dK_j, dV_j (16 × d, f32) in registers while it loops over every
//    query head of the KV head's group and, for each, over the query tiles i that can see the
//    keys (tiles wholly above the diagonal skipped; Q_i, dO_i, L_i, D_i double-buffered by
//    cp.async). Everything is computed transposed (keys as the mma's M dimension):
//      Sᵀ = K_j Q_iᵀ ;  Pᵀ = exp(τSᵀ − L_i)                 (masked entries exactly 0)
//      dV_j += Pᵀ dO_i
//      dPᵀ = V_j dO_iᵀ ;  dSᵀ = Pᵀ ∘ (dPᵀ − D_i)
//      dK_j += dSᵀ Q_i                                       (τ applied once at the end)
//      dQ_i += dS K_j: dSᵀ goes through shared memory (bf16), the 4 warps split the
//      (query tile × d) product and add it to the f32 accumulator with atomicAdd.
//    Summing over the group's query heads inside the block makes dK, dV deterministic and
//    needs no atomics; only dQ's last bits depend on the order of the atomic additions.
// 3. flash_bwd_convert_dq: dQ = bf16(τ · accumulator).
//
// Fragment layouts (PTX ISA, "Matrix fragments for mma.m16n8k16", g = lane/4, t = lane%4):
//   A 16×16: a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..]
//   B 16×8:  b0 = B[2t..2t+1][g], b1 = B[2t+8..2t+9][g]
//   C 16×8:  c0,c1 = C[g][2t..2t+1], c2,c3 = C[g+8][2t..2t+1]
// ldmatrix.x4: lanes 8j..8j+7 give the row addresses of matrix j; without .trans thread i gets
// row i/4, elements 2(i%4), 2(i%4)+1 of each matrix; with .trans the same of its transpose.
// Every tile is stored in shared memory as it lies in global memory (rows of d elements,
// padded by 16 bytes so that the 8 rows of one ldmatrix fall in 8 distinct bank groups); an
// operand whose reduction dimension runs down the rows (V and dO and Q as B of a P·X product,
// dSᵀ as A of dS·K) is read with ldmatrix.trans.
#include "common.cuh"
#include "mma_sm80.cuh"

namespace flash {

constexpr int THREADS = 128;  // 4 warps
constexpr int PAD = 8;        // 16 bytes of padding per shared row
constexpr int BN = 64;        // keys per tile (forward and backward)
constexpr int FWD_BM = 64;    // queries per forward block: 16 per warp
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;

// Queries per backward tile: 64 for d = 64; 32 for d = 128, which keeps the 2·16·128/32 = 128
// f32 dK, dV accumulators plus Sᵀ and dPᵀ in registers without spilling.
template <int HD>
struct Bwd {
  static constexpr int BQ = HD == 64 ? 64 : 32;
};

template <int HD>
constexpr int fwd_smem_bytes() {
  return (FWD_BM + 4 * BN) * (HD + PAD) * 2;  // Q, 2 × (K, V)
}

template <int HD>
constexpr int bwd_smem_bytes() {
  constexpr int BQ = Bwd<HD>::BQ;
  // K, V; 2 × (Q, dO); dSᵀ [BN][BQ + PAD] bf16; 2 × (L, D) f32
  return 2 * BN * (HD + PAD) * 2 + 4 * BQ * (HD + PAD) * 2 + BN * (BQ + PAD) * 2 + 4 * BQ * 4;
}

using namespace sm80;

// Two floats as a bf16x2 register (round to nearest even): `lo` in the low half, the element
// with the smaller column index in every fragment.
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// 2^x on the SFU (relative error ~2⁻²²; exp2(−inf) = +0, as the masking needs).
__device__ __forceinline__ float exp2_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// A-fragments (16 rows × 16 columns starting at column `col`) of a row-major tile: row
// `row0 + lane%16`, column `col + (lane/16)·8` feeds matrices a0..a3 in order.
template <int LD>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], uint32_t tile, int row0, int col,
                                       int lane) {
  ldmatrix_x4(a, tile + ((row0 + (lane & 15)) * LD + col + (lane >> 4) * 8) * 2);
}

// B-fragments of two n8 tiles for C = A·Xᵀ with X stored row-major [n][k] (X = K for Q·Kᵀ):
// rows n0..n0+15 of X, columns k0..k0+15. r[0], r[1] = b0, b1 of n-tile n0; r[2], r[3] of n0+8.
template <int LD>
__device__ __forceinline__ void load_b_nk(uint32_t (&r)[4], uint32_t tile, int n0, int k0,
                                          int lane) {
  ldmatrix_x4(r, tile + ((n0 + (lane & 7) + ((lane >> 4) << 3)) * LD + k0 + ((lane >> 3) & 1) * 8) * 2);
}

// B-fragments of two n8 tiles for C = A·X with X stored row-major [k][n] (X = V for P·V):
// rows k0..k0+15 of X, columns n0..n0+15, through ldmatrix.trans. Same r order as load_b_nk.
template <int LD>
__device__ __forceinline__ void load_b_kn(uint32_t (&r)[4], uint32_t tile, int k0, int n0,
                                          int lane) {
  ldmatrix_x4_trans(
      r, tile + ((k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8) * 2);
}

// Copies a ROWS × HD tile into shared memory at byte address `dst` (rows of HD + PAD
// elements): row r comes from `src + r·stride`; rows r ≥ valid are zero-filled and read nothing
// (their source address is replaced by `fallback`, any valid pointer).
template <int HD, int ROWS>
__device__ __forceinline__ void load_tile(uint32_t dst, const bf16* src, long long stride,
                                          int valid, const bf16* fallback) {
  constexpr int CPR = HD / 8;  // 16-byte chunks per row
  constexpr int CHUNKS = ROWS * CPR;
  static_assert(CHUNKS % THREADS == 0, "whole chunks per thread");
#pragma unroll
  for (int i = 0; i < CHUNKS / THREADS; ++i) {
    const int c = threadIdx.x + i * THREADS;
    const int r = c / CPR, col = (c % CPR) * 8;
    const bool ok = r < valid;
    const bf16* p = ok ? src + r * stride + col : fallback;
    cp_async16(dst + (r * (HD + PAD) + col) * 2, p, ok ? 16 : 0);
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.

template <int HD>
__device__ __forceinline__ void fwd_block(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                          const bf16* __restrict__ v, bf16* __restrict__ out,
                                          float* __restrict__ lse, int queries, int keys,
                                          int heads, int kv_heads, float scale_log2) {
  constexpr int BM = FWD_BM, LD = HD + PAD;
  constexpr int KT = HD / 16;  // k16 steps over d for Q·Kᵀ
  constexpr int DT = HD / 8;   // n8 tiles of O
  constexpr int ST = BN / 8;   // n8 tiles of S
  constexpr int TILE = 64 * LD * 2;
  static_assert(BM == 64 && BN == 64, "tile byte size assumes 64 rows");
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t sQ = smem_addr(smem);
  // K of stage s at sQ + (1 + 2s)·TILE, V at sQ + (2 + 2s)·TILE.

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  // Heaviest tiles (most keys) first, so the short ones fill the tail of the grid.
  const int m0 = (gridDim.x - 1 - blockIdx.x) * BM;
  const int h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (heads / kv_heads);
  const int offset = keys - queries;  // position of query 0
  const long long qs = (long long)heads * HD, kvs = (long long)kv_heads * HD;
  const bf16* qh = q + ((long long)b * queries + m0) * qs + (long long)h * HD;
  const bf16* kh = k + (long long)b * keys * kvs + (long long)kvh * HD;
  const bf16* vh = v + (long long)b * keys * kvs + (long long)kvh * HD;
  // Key tiles 0..n_tiles−1 hold every key some row of the tile sees; later ones are skipped.
  const int last_key = offset + min(m0 + BM, queries) - 1;
  const int n_tiles = last_key / BN + 1;

  load_tile<HD, BM>(sQ, qh, qs, queries - m0, q);
  load_tile<HD, BN>(sQ + TILE, kh, kvs, keys, k);
  load_tile<HD, BN>(sQ + 2 * TILE, vh, kvs, keys, v);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  uint32_t qf[KT][4];
#pragma unroll
  for (int kk = 0; kk < KT; ++kk) load_a<LD>(qf[kk], sQ, warp * 16, kk * 16, lane);

  float o[DT][4];
#pragma unroll
  for (int d = 0; d < DT; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  // Per thread: rows g and g+8 of the warp's 16 (index r = 0, 1). The running max m is in
  // base-2 units; the running sum ℓ is this thread's partial (its 2 of every 8 columns): the
  // rescaling factor is the same across the quad, so the partials are summed once at the end.
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.0f, 0.0f};
  const int pos0 = offset + m0 + warp * 16 + g;  // position of row g; row g+8 is at pos0 + 8
  const int tile_min_pos = offset + m0;

  for (int n = 0; n < n_tiles; ++n) {
    const int cur = n & 1;
    if (n + 1 < n_tiles) {  // prefetch tile n+1 into the other stage (freed by the last barrier)
      const int n1 = (n + 1) * BN;
      const uint32_t nk = sQ + (1 + 2 * (cur ^ 1)) * TILE;
      load_tile<HD, BN>(nk, kh + n1 * kvs, kvs, keys - n1, k);
      load_tile<HD, BN>(nk + TILE, vh + n1 * kvs, kvs, keys - n1, v);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint32_t sK = sQ + (1 + 2 * cur) * TILE, sV = sK + TILE;

    // S = Q_i K_jᵀ (16 × 64 per warp).
    float s[ST][4];
#pragma unroll
    for (int j = 0; j < ST; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
#pragma unroll
      for (int jp = 0; jp < ST / 2; ++jp) {
        uint32_t r[4];
        load_b_nk<LD>(r, sK, jp * 16, kk * 16, lane);
        mma_bf16(s[2 * jp], qf[kk], r[0], r[1]);
        mma_bf16(s[2 * jp + 1], qf[kk], r[2], r[3]);
      }
    }

    // Base-2 scores; keys after a row's position (the causal mask, and the zero-filled keys
    // past the end) → −inf. Only tiles reaching past the tile's first position need it.
    const int n0 = n * BN;
    const bool mask = n0 + BN - 1 > tile_min_pos;
#pragma unroll
    for (int j = 0; j < ST; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[j][e] * scale_log2;
        if (mask) {
          const int col = n0 + 8 * j + 2 * t + (e & 1);
          if (col > pos0 + (e >> 1) * 8) x = -INFINITY;
        }
        s[j][e] = x;
      }
    }

    // Online softmax (Algorithm 1, lines 9-10): new max, rescale ℓ and O, P̃ = exp2(s₂ − m₂).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = row_max[r];
#pragma unroll
      for (int j = 0; j < ST; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      // A row with no visible key so far keeps m = −inf; subtracting 0 instead keeps
      // exp2(−inf − m) = 0 rather than NaN.
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float alpha = exp2_approx(row_max[r] - base);
      row_max[r] = mx;
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < ST; ++j) {
        s[j][2 * r] = exp2_approx(s[j][2 * r] - base);
        s[j][2 * r + 1] = exp2_approx(s[j][2 * r + 1] - base);
        sum += s[j][2 * r] + s[j][2 * r + 1];
      }
      row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
      for (int d = 0; d < DT; ++d) {
        o[d][2 * r] *= alpha;
        o[d][2 * r + 1] *= alpha;
      }
    }

    // O += P̃ V_j: P̃ (bf16) as A-fragments from the accumulators, V through ldmatrix.trans.
#pragma unroll
    for (int kk = 0; kk < BN / 16; ++kk) {
      const uint32_t a[4] = {
          pack_bf16(s[2 * kk][0], s[2 * kk][1]), pack_bf16(s[2 * kk][2], s[2 * kk][3]),
          pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]),
          pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t r[4];
        load_b_kn<LD>(r, sV, kk * 16, dp * 16, lane);
        mma_bf16(o[2 * dp], a, r[0], r[1]);
        mma_bf16(o[2 * dp + 1], a, r[2], r[3]);
      }
    }
    __syncthreads();  // every warp is done with this stage before it is refilled
  }

  // O = diag(ℓ)⁻¹ O, L = (m₂ + log₂ ℓ)·ln 2 (Algorithm 1, lines 12-13).
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float l = row_sum[r];
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    const int row = m0 + warp * 16 + g + 8 * r;
    if (row < queries) {
      const float inv = 1.0f / l;
      bf16* dst = out + (((long long)b * queries + row) * heads + h) * HD + 2 * t;
#pragma unroll
      for (int d = 0; d < DT; ++d) {
        *reinterpret_cast<__nv_bfloat162*>(dst + 8 * d) =
            __floats2bfloat162_rn(o[d][2 * r] * inv, o[d][2 * r + 1] * inv);
      }
      if (t == 0) lse[((long long)b * heads + h) * queries + row] = (row_max[r] + log2f(l)) * LN2;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <int HD>
__device__ __forceinline__ void bwd_block(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                          const bf16* __restrict__ v,
                                          const bf16* __restrict__ dout,
                                          const float* __restrict__ lse,
                                          const float* __restrict__ delta,
                                          float* __restrict__ dq_acc, bf16* __restrict__ dk,
                                          bf16* __restrict__ dv, int queries, int keys, int heads,
                                          int kv_heads, float scale, float scale_log2) {
  constexpr int BQ = Bwd<HD>::BQ, LD = HD + PAD, LDS = BQ + PAD;
  constexpr int KT = HD / 16;  // k16 steps over d
  constexpr int QT = BQ / 8;   // n8 tiles over the queries of Sᵀ, dPᵀ
  constexpr int DT = HD / 8;   // n8 tiles of dK, dV
  constexpr int KV_BYTES = BN * LD * 2, Q_BYTES = BQ * LD * 2;
  // dQ tile (BQ × d) split over the 4 warps: MT row tiles of 16 × SPLIT column ranges.
  constexpr int MT = BQ / 16, SPLIT = 4 / MT, DW = HD / SPLIT;
  static_assert(MT * SPLIT == 4 && DW % 16 == 0, "dQ split over 4 warps");
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t sK = smem_addr(smem), sV = sK + KV_BYTES;
  const uint32_t sQ0 = sK + 2 * KV_BYTES;   // Q of stage s at sQ0 + s·Q_BYTES
  const uint32_t sO0 = sQ0 + 2 * Q_BYTES;   // dO of stage s at sO0 + s·Q_BYTES
  const uint32_t sdS = sO0 + 2 * Q_BYTES;   // dSᵀ [BN][LDS] bf16
  float* const sLse = reinterpret_cast<float*>(smem + 2 * KV_BYTES + 4 * Q_BYTES + BN * LDS * 2);
  float* const sDelta = sLse + 2 * BQ;      // stage s at sLse + s·BQ, sDelta + s·BQ

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3;
  const int n0 = blockIdx.x * BN;  // low key tiles have the most queries: they start first
  const int kvh = blockIdx.y, b = blockIdx.z;
  const int group = heads / kv_heads;
  const int offset = keys - queries;
  const long long qs = (long long)heads * HD, kvs = (long long)kv_heads * HD;

  load_tile<HD, BN>(sK, k + ((long long)b * keys + n0) * kvs + (long long)kvh * HD, kvs,
                    keys - n0, k);
  load_tile<HD, BN>(sV, v + ((long long)b * keys + n0) * kvs + (long long)kvh * HD, kvs,
                    keys - n0, v);

  // Query tiles that see at least one of these keys: position offset + i ≥ n0.
  const int qt_first = max(0, n0 - offset) / BQ;
  const int nq = max(0, (queries + BQ - 1) / BQ - qt_first);
  const int total = group * nq;  // iterations: (query head of the group, query tile)

  // Stage `st` ← Q_i, dO_i, L_i, D_i of iteration `it`.
  auto load_stage = [&](int it, int st) {
    const int hh = kvh * group + it / nq;
    const int q0 = (qt_first + it % nq) * BQ;
    const long long first = ((long long)b * queries + q0) * qs + (long long)hh * HD;
    load_tile<HD, BQ>(sQ0 + st * Q_BYTES, q + first, qs, queries - q0, q);
    load_tile<HD, BQ>(sO0 + st * Q_BYTES, dout + first, qs, queries - q0, dout);
    if (tid < 2 * BQ) {
      const int c = tid % BQ, i = q0 + c;
      const bool ok = i < queries;
      const float* src = tid < BQ ? lse : delta;
      const long long idx = ((long long)b * heads + hh) * queries + i;
      float* dst = (tid < BQ ? sLse : sDelta) + st * BQ + c;
      cp_async4(smem_addr(dst), ok ? src + idx : src, ok ? 4 : 0);
    }
  };

  if (total > 0) load_stage(0, 0);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  float dk_acc[DT][4], dv_acc[DT][4];
#pragma unroll
  for (int d = 0; d < DT; ++d) {
#pragma unroll
    for (int e = 0; e < 4; ++e) dk_acc[d][e] = dv_acc[d][e] = 0.0f;
  }
  const int key0 = n0 + warp * 16 + g;  // key of rows g; rows g+8 hold key0 + 8

  for (int it = 0; it < total; ++it) {
    const int cur = it & 1;
    if (it + 1 < total) {  // prefetch the next (head, query tile) into the other stage
      load_stage(it + 1, cur ^ 1);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const int hh = kvh * group + it / nq;
    const int q0 = (qt_first + it % nq) * BQ;
    const uint32_t sQ = sQ0 + cur * Q_BYTES, sO = sO0 + cur * Q_BYTES;
    const float* lse_s = sLse + cur * BQ;
    const float* delta_s = sDelta + cur * BQ;

    // Sᵀ = K_j Q_iᵀ (16 keys × BQ queries per warp).
    float st[QT][4];
#pragma unroll
    for (int j = 0; j < QT; ++j) st[j][0] = st[j][1] = st[j][2] = st[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t a[4];
      load_a<LD>(a, sK, warp * 16, kk * 16, lane);
#pragma unroll
      for (int jp = 0; jp < QT / 2; ++jp) {
        uint32_t r[4];
        load_b_nk<LD>(r, sQ, jp * 16, kk * 16, lane);
        mma_bf16(st[2 * jp], a, r[0], r[1]);
        mma_bf16(st[2 * jp + 1], a, r[2], r[3]);
      }
    }

    // Pᵀ = exp(τSᵀ − L) = exp2(s₂ − L·log₂e) (Algorithm 2, line 13); entries of a key after
    // the query's position, or of a query past the end, are exactly 0.
    const bool mask = offset + q0 < n0 + BN - 1 || q0 + BQ > queries;
#pragma unroll
    for (int j = 0; j < QT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = 8 * j + 2 * t + (e & 1);
        float p = exp2_approx(fmaf(st[j][e], scale_log2, -lse_s[c] * LOG2E));
        if (mask) {
          const int i = q0 + c, key = key0 + (e >> 1) * 8;
          if (i >= queries || key > offset + i) p = 0.0f;
        }
        st[j][e] = p;
      }
    }

    // dV_j += Pᵀ dO_i (line 16).
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      const uint32_t a[4] = {
          pack_bf16(st[2 * kk][0], st[2 * kk][1]), pack_bf16(st[2 * kk][2], st[2 * kk][3]),
          pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
          pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t r[4];
        load_b_kn<LD>(r, sO, kk * 16, dp * 16, lane);
        mma_bf16(dv_acc[2 * dp], a, r[0], r[1]);
        mma_bf16(dv_acc[2 * dp + 1], a, r[2], r[3]);
      }
    }

    // dPᵀ = V_j dO_iᵀ (line 17).
    float dpt[QT][4];
#pragma unroll
    for (int j = 0; j < QT; ++j) dpt[j][0] = dpt[j][1] = dpt[j][2] = dpt[j][3] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KT; ++kk) {
      uint32_t a[4];
      load_a<LD>(a, sV, warp * 16, kk * 16, lane);
#pragma unroll
      for (int jp = 0; jp < QT / 2; ++jp) {
        uint32_t r[4];
        load_b_nk<LD>(r, sO, jp * 16, kk * 16, lane);
        mma_bf16(dpt[2 * jp], a, r[0], r[1]);
        mma_bf16(dpt[2 * jp + 1], a, r[2], r[3]);
      }
    }

    // dSᵀ = Pᵀ ∘ (dPᵀ − D_i) (line 18).
#pragma unroll
    for (int j = 0; j < QT; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) st[j][e] *= dpt[j][e] - delta_s[8 * j + 2 * t + (e & 1)];
    }

    // dK_j += dSᵀ Q_i (line 20; τ applied at the end), and dSᵀ → shared for dQ.
#pragma unroll
    for (int kk = 0; kk < BQ / 16; ++kk) {
      const uint32_t a[4] = {
          pack_bf16(st[2 * kk][0], st[2 * kk][1]), pack_bf16(st[2 * kk][2], st[2 * kk][3]),
          pack_bf16(st[2 * kk + 1][0], st[2 * kk + 1][1]),
          pack_bf16(st[2 * kk + 1][2], st[2 * kk + 1][3])};
#pragma unroll
      for (int dp = 0; dp < HD / 16; ++dp) {
        uint32_t r[4];
        load_b_kn<LD>(r, sQ, kk * 16, dp * 16, lane);
        mma_bf16(dk_acc[2 * dp], a, r[0], r[1]);
        mma_bf16(dk_acc[2 * dp + 1], a, r[2], r[3]);
      }
    }
    {
      unsigned char* ds_rows = smem + 2 * KV_BYTES + 4 * Q_BYTES;
#pragma unroll
      for (int j = 0; j < QT; ++j) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int row = warp * 16 + g + 8 * r, col = 8 * j + 2 * t;
          *reinterpret_cast<uint32_t*>(ds_rows + (row * LDS + col) * 2) =
              pack_bf16(st[j][2 * r], st[j][2 * r + 1]);
        }
      }
    }
    __syncthreads();

    // dQ_i += dS K_j (line 19): warp w takes query rows (w % MT)·16.. and columns
    // (w / MT)·DW..; dS is read from dSᵀ with ldmatrix.trans, K as a [k][n] operand.
    {
      const int mt = warp % MT, d0 = (warp / MT) * DW;
      float dq[DW / 8][4];
#pragma unroll
      for (int d = 0; d < DW / 8; ++d) dq[d][0] = dq[d][1] = dq[d][2] = dq[d][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < BN / 16; ++kk) {
        uint32_t a[4];
        // a0: queries 0-7 × keys 0-7, a1: queries 8-15 × keys 0-7, a2: queries 0-7 × keys
        // 8-15, a3: queries 8-15 × keys 8-15, each the transpose of an 8×8 block of dSᵀ.
        ldmatrix_x4_trans(a, sdS + ((kk * 16 + (lane & 7) + ((lane >> 4) << 3)) * LDS +
                                    mt * 16 + ((lane >> 3) & 1) * 8) *
                                       2);
#pragma unroll
        for (int dp = 0; dp < DW / 16; ++dp) {
          uint32_t r[4];
          load_b_kn<LD>(r, sK, kk * 16, d0 + dp * 16, lane);
          mma_bf16(dq[2 * dp], a, r[0], r[1]);
          mma_bf16(dq[2 * dp + 1], a, r[2], r[3]);
        }
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int i = q0 + mt * 16 + g + 8 * r;
        if (i < queries) {
          float* dst = dq_acc + (((long long)b * queries + i) * heads + hh) * HD + d0 + 2 * t;
#pragma unroll
          for (int d = 0; d < DW / 8; ++d) {
            atomicAdd(dst + 8 * d, dq[d][2 * r]);
            atomicAdd(dst + 8 * d + 1, dq[d][2 * r + 1]);
          }
        }
      }
    }
    // No barrier here: the next iteration's prefetch refills stage `cur`, whose last reads
    // were before the barrier above, and its dSᵀ stores come after its first barrier, which
    // every warp reaches only once done reading dSᵀ here.
  }

  // dK_j = τ·Σ dSᵀ Q, dV_j, summed over the group's query heads: written once, in bf16.
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int key = key0 + 8 * r;
    if (key < keys) {
      const long long row = (((long long)b * keys + key) * kv_heads + kvh) * HD + 2 * t;
#pragma unroll
      for (int d = 0; d < DT; ++d) {
        *reinterpret_cast<__nv_bfloat162*>(dk + row + 8 * d) =
            __floats2bfloat162_rn(dk_acc[d][2 * r] * scale, dk_acc[d][2 * r + 1] * scale);
        *reinterpret_cast<__nv_bfloat162*>(dv + row + 8 * d) =
            __floats2bfloat162_rn(dv_acc[d][2 * r], dv_acc[d][2 * r + 1]);
      }
    }
  }
}

}  // namespace flash

// Shared-memory bytes the host passes at launch (src/backend/cuda/flash_attention.rs).
static_assert(flash::fwd_smem_bytes<64>() == 46080, "forward d=64 shared bytes (flash_attention.rs)");
static_assert(flash::fwd_smem_bytes<128>() == 87040, "forward d=128 shared bytes (flash_attention.rs)");
static_assert(flash::bwd_smem_bytes<64>() == 65536, "backward d=64 shared bytes (flash_attention.rs)");
static_assert(flash::bwd_smem_bytes<128>() == 75264, "backward d=128 shared bytes (flash_attention.rs)");

// Grid (ceil(queries / 64), heads, batch), 128 threads, fwd_smem_bytes<HD>() dynamic shared.
// scale_log2 = log₂e / √d.
#define FLASH_FWD_KERNEL(NAME, HD)                                                               \
  extern "C" __global__ void __launch_bounds__(flash::THREADS)                                  \
      NAME(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,  \
           bf16* __restrict__ out, float* __restrict__ lse, int queries, int keys, int heads,   \
           int kv_heads, float scale_log2) {                                                    \
    flash::fwd_block<HD>(q, k, v, out, lse, queries, keys, heads, kv_heads, scale_log2);        \
  }

// HOT: flash_fwd_hd64 flash_fwd_hd128
FLASH_FWD_KERNEL(flash_fwd_hd64, 64)
FLASH_FWD_KERNEL(flash_fwd_hd128, 128)

// Grid (ceil(keys / 64), kv_heads, batch), 128 threads, bwd_smem_bytes<HD>() dynamic shared.
// dq_acc must hold zeros (flash_bwd_preprocess writes them); scale = 1/√d.
#define FLASH_BWD_KERNEL(NAME, HD)                                                               \
  extern "C" __global__ void __launch_bounds__(flash::THREADS)                                  \
      NAME(const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v,  \
           const bf16* __restrict__ dout, const float* __restrict__ lse,                         \
           const float* __restrict__ delta, float* __restrict__ dq_acc, bf16* __restrict__ dk,  \
           bf16* __restrict__ dv, int queries, int keys, int heads, int kv_heads, float scale,  \
           float scale_log2) {                                                                  \
    flash::bwd_block<HD>(q, k, v, dout, lse, delta, dq_acc, dk, dv, queries, keys, heads,       \
                         kv_heads, scale, scale_log2);                                          \
  }

// HOT: flash_bwd_hd64 flash_bwd_hd128
FLASH_BWD_KERNEL(flash_bwd_hd64, 64)
FLASH_BWD_KERNEL(flash_bwd_hd128, 128)

// D[b, h, i] = Σ_d dO[b, i, h, d]·O[b, i, h, d] in f32 (Algorithm 2, line 4; FA-2 §3.2's
// preprocessing), one warp per row (b, i, h) of `rows` = batch·queries·heads, grid-stride;
// also zeroes the row's f32 dQ accumulator. hd even.
// HOT: flash_bwd_preprocess
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    flash_bwd_preprocess(const bf16* __restrict__ out, const bf16* __restrict__ dout,
                         float* __restrict__ delta, float* __restrict__ dq_acc, long long rows,
                         int queries, int heads, int hd) {
  const int lane = threadIdx.x & 31;
  const long long warps = (long long)gridDim.x * (ROW_THREADS / 32);
  for (long long row = (long long)blockIdx.x * (ROW_THREADS / 32) + (threadIdx.x >> 5);
       row < rows; row += warps) {
    const bf16* o = out + row * hd;
    const bf16* d = dout + row * hd;
    float* acc = dq_acc + row * hd;
    float sum = 0.0f;
    for (int c = 2 * lane; c < hd; c += 64) {
      const float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(o + c));
      const float2 e = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(d + c));
      sum = fmaf(a.x, e.x, fmaf(a.y, e.y, sum));
      *reinterpret_cast<float2*>(acc + c) = make_float2(0.0f, 0.0f);
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      const long long h = row % heads, bi = row / heads;
      const long long i = bi % queries, b = bi / queries;
      delta[(b * heads + h) * queries + i] = sum;
    }
  }
}

// dq[x] = bf16(scale · acc[x]) for 4·n4 elements, grid-stride, 16-byte loads.
// HOT: flash_bwd_convert_dq
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    flash_bwd_convert_dq(const float* __restrict__ acc, bf16* __restrict__ dq, long long n4,
                         float scale) {
  const long long stride = (long long)gridDim.x * ROW_THREADS;
  for (long long x = (long long)blockIdx.x * ROW_THREADS + threadIdx.x; x < n4; x += stride) {
    const float4 a = reinterpret_cast<const float4*>(acc)[x];
    uint2 packed;
    packed.x = flash::pack_bf16(a.x * scale, a.y * scale);
    packed.y = flash::pack_bf16(a.z * scale, a.w * scale);
    reinterpret_cast<uint2*>(dq)[x] = packed;
  }
}
