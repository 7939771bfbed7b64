// Plain causal attention for training, any head_dim d from 1 to 256: simple and deterministic,
// not fast. Same contract as flash_attention.cu (layouts: the docs of
// src/backend/cuda/flash_attention.rs): q, out, dO, dq [batch, queries, heads, d]; k, v, dk, dv
// [batch, keys, kv_heads, d]; lse and D [batch, heads, queries] f32. Query i sits at position
// keys − queries + i and sees the keys j at or before it; query head h reads KV head
// h / (heads / kv_heads); τ = 1/√d.
//   forward   s_ij = τ·q_i·k_j,  lse_i = ln Σ_j exp(s_ij),  o_i = Σ_j exp(s_ij − lse_i)·v_j
//   backward  p_ij = exp(s_ij − lse_i),  D_i = Σ_c dO_ic·o_ic,  ds_ij = p_ij·(dO_i·v_j − D_i)
//             dq_i = τ·Σ_j ds_ij·k_j
//             dk_j = τ·Σ_{h in group} Σ_{i sees j} ds_ij·q_i
//             dv_j = Σ_{h in group} Σ_{i sees j} p_ij·dO_i
// (FlashAttention-2, Dao 2023, eqs. of its Algorithm 2, without the tiling.)
// attn_plain_fwd and attn_plain_bwd_dq: one block per (query, head, batch), the row's scores in
// dynamic shared memory (4·keys bytes, checked by the host); bwd_dq also writes D_i for
// attn_plain_bwd_dkv, which runs after it on the same stream: one block per (key, KV head,
// batch), over the (query, head) pairs that see the key, one pair per thread per chunk. Every
// sum runs in an order fixed by the shapes, so every output is the same on every run.
// CPU references: backend::cpu::attention::{causal_attention, causal_attention_backward}.
#include "common.cuh"

#define ATTN_THREADS 128
#define ATTN_MAX_HEAD_DIM 256  // 2·ATTN_THREADS: at most two columns per thread

// s·g for a row s in shared memory and a bf16 row g in global memory, in column order.
__device__ __forceinline__ float dot_row(const float* __restrict__ s, const bf16* __restrict__ g,
                                         int d) {
  float a = 0.0f;
#pragma unroll 4  // ptxas's own choice spills a register in attn_plain_bwd_dq (sm_90)
  for (int c = 0; c < d; ++c) a = fmaf(s[c], to_float(g[c]), a);
  return a;
}

// Threads of the weighted row sums Σ_r w_r·M[r, :]: `lanes` = min(d, ATTN_THREADS) columns,
// `slices` = ATTN_THREADS / lanes interleaved subsets of the rows r; thread t owns column
// t % lanes (and t % lanes + lanes when d > lanes) of slice t / lanes. Threads with
// slice ≥ slices take no rows (at most lanes − 1 of them, when lanes does not divide 128).
struct Cols {
  int lanes, slices, slice, col;
};

__device__ __forceinline__ Cols cols_of(int d) {
  Cols c;
  c.lanes = min(d, ATTN_THREADS);
  c.slices = ATTN_THREADS / c.lanes;
  c.slice = threadIdx.x / c.lanes;
  c.col = threadIdx.x % c.lanes;
  return c;
}

// acc += w·row over this thread's columns.
__device__ __forceinline__ void axpy(float (&acc)[2], float w, const bf16* __restrict__ row,
                                     const Cols& c, int d) {
  acc[0] = fmaf(w, to_float(row[c.col]), acc[0]);
  if (c.col + c.lanes < d) acc[1] = fmaf(w, to_float(row[c.col + c.lanes]), acc[1]);
}

// Adds the slices' partial sums in slice order: afterwards threads t < lanes hold the totals of
// their columns. `scratch` holds 2·ATTN_THREADS floats.
__device__ __forceinline__ void reduce_slices(float (&acc)[2], const Cols& c, float* scratch) {
  __syncthreads();  // the scratch may still be read by an earlier reduction
  if (c.slice < c.slices) {
    scratch[threadIdx.x] = acc[0];
    scratch[ATTN_THREADS + threadIdx.x] = acc[1];
  }
  __syncthreads();
  if ((int)threadIdx.x < c.lanes) {
    float a0 = 0.0f, a1 = 0.0f;
    for (int g = 0; g < c.slices; ++g) {
      a0 += scratch[g * c.lanes + threadIdx.x];
      a1 += scratch[ATTN_THREADS + g * c.lanes + threadIdx.x];
    }
    acc[0] = a0;
    acc[1] = a1;
  }
}

// Writes bf16(scale·acc) to this thread's columns of `row` (threads t < lanes, after
// reduce_slices).
__device__ __forceinline__ void store_cols(bf16* __restrict__ row, const float (&acc)[2],
                                           float scale, const Cols& c, int d) {
  if ((int)threadIdx.x < c.lanes) {
    row[c.col] = from_float<bf16>(scale * acc[0]);
    if (c.col + c.lanes < d) row[c.col + c.lanes] = from_float<bf16>(scale * acc[1]);
  }
}

// HOT: attn_plain_fwd
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
    attn_plain_fwd(const bf16* __restrict__ q, const bf16* __restrict__ k,
                   const bf16* __restrict__ v, bf16* __restrict__ out, float* __restrict__ lse,
                   int queries, int keys, int heads, int kv_heads, int d, float scale) {
  extern __shared__ float scores[];  // [keys]: s_ij, then p_ij, for the visible j
  __shared__ float qs[ATTN_MAX_HEAD_DIM];
  __shared__ float scratch[2 * ATTN_THREADS];
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (heads / kv_heads);
  const int visible = keys - queries + i + 1;
  const size_t row = (((size_t)b * queries + i) * heads + h) * d;
  const size_t kv_stride = (size_t)kv_heads * d;  // from key j to key j + 1
  const size_t kv0 = ((size_t)b * keys * kv_heads + kvh) * d;
  for (int c = threadIdx.x; c < d; c += ATTN_THREADS) qs[c] = to_float(q[row + c]);
  __syncthreads();

  Lse st = lse_empty();
  for (int j = threadIdx.x; j < visible; j += ATTN_THREADS) {
    const float s[1] = {scale * dot_row(qs, k + kv0 + j * kv_stride, d)};
    scores[j] = s[0];
    lse_add(st, s, s[0]);
  }
  const float l = block_lse(st, scratch);  // its barriers also publish the scores
  if (threadIdx.x == 0) lse[((size_t)b * heads + h) * queries + i] = l;
  for (int j = threadIdx.x; j < visible; j += ATTN_THREADS) scores[j] = expf(scores[j] - l);
  __syncthreads();

  const Cols c = cols_of(d);
  float acc[2] = {0.0f, 0.0f};
  if (c.slice < c.slices) {
    for (int j = c.slice; j < visible; j += c.slices)
      axpy(acc, scores[j], v + kv0 + j * kv_stride, c, d);
  }
  reduce_slices(acc, c, scratch);
  store_cols(out + row, acc, 1.0f, c, d);
}

// HOT: attn_plain_bwd_dq
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
    attn_plain_bwd_dq(const bf16* __restrict__ q, const bf16* __restrict__ k,
                      const bf16* __restrict__ v, const bf16* __restrict__ out,
                      const bf16* __restrict__ d_out, const float* __restrict__ lse,
                      float* __restrict__ delta, bf16* __restrict__ dq, int queries, int keys,
                      int heads, int kv_heads, int d, float scale) {
  extern __shared__ float ds[];  // [keys]: ds_ij for the visible j
  __shared__ float qs[ATTN_MAX_HEAD_DIM];
  __shared__ float dos[ATTN_MAX_HEAD_DIM];
  __shared__ float scratch[2 * ATTN_THREADS];
  const int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int kvh = h / (heads / kv_heads);
  const int visible = keys - queries + i + 1;
  const size_t row = (((size_t)b * queries + i) * heads + h) * d;
  const size_t stat = ((size_t)b * heads + h) * queries + i;
  const size_t kv_stride = (size_t)kv_heads * d;
  const size_t kv0 = ((size_t)b * keys * kv_heads + kvh) * d;

  float part = 0.0f;
  for (int c = threadIdx.x; c < d; c += ATTN_THREADS) {
    qs[c] = to_float(q[row + c]);
    dos[c] = to_float(d_out[row + c]);
    part = fmaf(dos[c], to_float(out[row + c]), part);
  }
  const float dd = block_sum1(part, scratch);  // D_i; the barriers also publish qs, dos
  if (threadIdx.x == 0) delta[stat] = dd;
  const float l = lse[stat];
  for (int j = threadIdx.x; j < visible; j += ATTN_THREADS) {
    const size_t at = kv0 + j * kv_stride;
    const float p = expf(scale * dot_row(qs, k + at, d) - l);
    ds[j] = p * (dot_row(dos, v + at, d) - dd);
  }
  __syncthreads();

  const Cols c = cols_of(d);
  float acc[2] = {0.0f, 0.0f};
  if (c.slice < c.slices) {
    for (int j = c.slice; j < visible; j += c.slices)
      axpy(acc, ds[j], k + kv0 + j * kv_stride, c, d);
  }
  reduce_slices(acc, c, scratch);
  store_cols(dq + row, acc, scale, c, d);
}

// HOT: attn_plain_bwd_dkv
extern "C" __global__ void __launch_bounds__(ATTN_THREADS)
    attn_plain_bwd_dkv(const bf16* __restrict__ q, const bf16* __restrict__ k,
                       const bf16* __restrict__ v, const bf16* __restrict__ d_out,
                       const float* __restrict__ lse, const float* __restrict__ delta,
                       bf16* __restrict__ dk, bf16* __restrict__ dv, int queries, int keys,
                       int heads, int kv_heads, int d, float scale) {
  __shared__ float ks[ATTN_MAX_HEAD_DIM];
  __shared__ float vs[ATTN_MAX_HEAD_DIM];
  __shared__ float pw[ATTN_THREADS];   // p_ij of this chunk's pairs
  __shared__ float dsw[ATTN_THREADS];  // ds_ij of this chunk's pairs
  __shared__ float scratch[2 * ATTN_THREADS];
  const int j = blockIdx.x, kvh = blockIdx.y, b = blockIdx.z;
  const int group = heads / kv_heads;
  const int h0 = kvh * group;
  // Queries i ≥ first see key j; pair n is query first + n / group, head h0 + n % group, so
  // that neighbouring threads read neighbouring rows of q and dO.
  const int first = max(0, j - (keys - queries));
  const int pairs = (queries - first) * group;
  const size_t kv_row = (((size_t)b * keys + j) * kv_heads + kvh) * d;
  for (int c = threadIdx.x; c < d; c += ATTN_THREADS) {
    ks[c] = to_float(k[kv_row + c]);
    vs[c] = to_float(v[kv_row + c]);
  }
  __syncthreads();

  const Cols c = cols_of(d);
  float dk_acc[2] = {0.0f, 0.0f}, dv_acc[2] = {0.0f, 0.0f};
  for (int base = 0; base < pairs; base += ATTN_THREADS) {
    const int n = min(ATTN_THREADS, pairs - base);
    if ((int)threadIdx.x < n) {
      const int pair = base + threadIdx.x;
      const int i = first + pair / group, h = h0 + pair % group;
      const size_t row = (((size_t)b * queries + i) * heads + h) * d;
      const size_t stat = ((size_t)b * heads + h) * queries + i;
      const float p = expf(scale * dot_row(ks, q + row, d) - lse[stat]);
      pw[threadIdx.x] = p;
      dsw[threadIdx.x] = p * (dot_row(vs, d_out + row, d) - delta[stat]);
    }
    __syncthreads();
    if (c.slice < c.slices) {
      for (int r = c.slice; r < n; r += c.slices) {
        const int pair = base + r;
        const int i = first + pair / group, h = h0 + pair % group;
        const size_t row = (((size_t)b * queries + i) * heads + h) * d;
        axpy(dv_acc, pw[r], d_out + row, c, d);
        axpy(dk_acc, dsw[r], q + row, c, d);
      }
    }
    __syncthreads();  // pw, dsw are rewritten by the next chunk
  }
  reduce_slices(dv_acc, c, scratch);
  store_cols(dv + kv_row, dv_acc, 1.0f, c, d);
  reduce_slices(dk_acc, c, scratch);
  store_cols(dk + kv_row, dk_acc, scale, c, d);
}
