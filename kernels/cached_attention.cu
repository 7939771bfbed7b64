// Causal grouped-query attention of a forward's rows against their sequence's KV cache
// (launchers: src/backend/cuda/cached_attention.rs; the cache's layout and `seq_table`: the
// header of kernels/decode.cu, whose kernels append to it). Scores and softmax in f32.
//   model_attention_j{1..4}    one warp per (row, head), online softmax
//   model_attention_split_j*   the same, each (row, head)'s keys over the 8 warps of one block
//   model_attention_part_j*,   the same, each (row, head)'s keys over several blocks (split-KV):
//   model_attention_combine_j*   partial outputs into a workspace, then their log-sum-exp combine
// CPU reference: backend::cpu::attention::causal_attention; tests in tests/cuda_model.rs and
// tests/cuda_kernels/attention_split_kv.rs.
#include "common.cuh"

// Causal grouped-query attention over the cache, one warp per (row, head) of the rows listed in
// row_list. Lane l holds the head dimensions 64j + 2l, 64j + 2l + 1 (j < J, head_dim ≤ 64J,
// head_dim even): q pre-scaled by scale·log2(e), so the softmax is in base 2. Keys go KB at a
// time: KB independent dot products and warp reductions in flight, then one rescale of the
// running output per group (online softmax, Milakov & Gimelshein 2018).
namespace attn {

// Keys per group: 8 for head_dim ≤ 64, 4 above (registers: KB·J·2 values of V in flight).
template <int J>
struct Keys {
  static constexpr int KB = J == 1 ? 8 : 4;
};

__device__ __forceinline__ float2 load2(const bf16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}

template <int J, int N>
__device__ __forceinline__ void keys_step(const float (&qv)[J][2], float (&acc)[J][2], float& m,
                                          float& l, const bf16* kp, const bf16* vp,
                                          size_t stride, int lane, int head_dim) {
  float s[N];
  float2 vv[N][J];
#pragma unroll
  for (int n = 0; n < N; ++n) {
    s[n] = 0.0f;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int d = 64 * j + 2 * lane;
      if (d < head_dim) {
        const float2 kk = load2(kp + n * stride + d);
        vv[n][j] = load2(vp + n * stride + d);
        s[n] += qv[j][0] * kk.x + qv[j][1] * kk.y;
      } else {
        vv[n][j] = make_float2(0.0f, 0.0f);
      }
    }
  }
  float mb = -INFINITY;
#pragma unroll
  for (int n = 0; n < N; ++n) {
    s[n] = warp_sum(s[n]);
    mb = fmaxf(mb, s[n]);
  }
  const float m_new = fmaxf(m, mb);
  const float corr = exp2f(m - m_new);  // 0 on the first keys (m = −inf)
  l *= corr;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    acc[j][0] *= corr;
    acc[j][1] *= corr;
  }
#pragma unroll
  for (int n = 0; n < N; ++n) {
    const float p = exp2f(s[n] - m_new);
    l += p;
#pragma unroll
    for (int j = 0; j < J; ++j) {
      acc[j][0] += p * vv[n][j].x;
      acc[j][1] += p * vv[n][j].y;
    }
  }
  m = m_new;
}

// Where one (row, head) pair reads and writes: its query and output rows, its sequence's keys
// and values of this layer at its kv head (grouped-query: h / (heads / kv_heads)), the stride
// between keys, and how many keys it sees (its position + 1, causal).
struct Pair {
  const bf16* qrow;
  const bf16* kp;
  const bf16* vp;
  size_t kv_dim;
  int keys;
};

__device__ __forceinline__ Pair locate_pair(const bf16* __restrict__ q, unsigned int t, int h,
                                            const unsigned int* __restrict__ row_seq,
                                            const unsigned int* __restrict__ positions,
                                            const unsigned long long* __restrict__ seq_table,
                                            int layer, int heads, int kv_heads, int head_dim) {
  const unsigned int s = row_seq[t];
  const int kvh = h / (heads / kv_heads);
  const size_t kv_dim = (size_t)kv_heads * head_dim;
  const unsigned long long cap = seq_table[3 * s + 2];
  const size_t base = (size_t)layer * cap * kv_dim + (size_t)kvh * head_dim;
  Pair p;
  p.qrow = q + ((size_t)t * heads + h) * head_dim;
  p.kp = reinterpret_cast<const bf16*>(seq_table[3 * s]) + base;
  p.vp = reinterpret_cast<const bf16*>(seq_table[3 * s + 1]) + base;
  p.kv_dim = kv_dim;
  p.keys = (int)positions[t] + 1;
  return p;
}

// Row t's output of head h (`out` is [rows, heads, head_dim], as q).
__device__ __forceinline__ bf16* out_row(bf16* out, unsigned int t, int h, int heads,
                                         int head_dim) {
  return out + ((size_t)t * heads + h) * head_dim;
}

// The lane's elements of q (d = 64j + 2·lane, 2 per j), pre-scaled by scale_log2 so the scores
// come out in log2 units; the output accumulator zeroed.
template <int J>
__device__ __forceinline__ void load_query(float (&qv)[J][2], float (&acc)[J][2],
                                           const bf16* qrow, float scale_log2, int lane,
                                           int head_dim) {
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = 64 * j + 2 * lane;
    const float2 v = d < head_dim ? load2(qrow + d) : make_float2(0.0f, 0.0f);
    qv[j][0] = v.x * scale_log2;
    qv[j][1] = v.y * scale_log2;
    acc[j][0] = 0.0f;
    acc[j][1] = 0.0f;
  }
}

// Keys [begin, end) of the pair into the warp's running max m, sum l and output acc (online
// softmax): KB at a time, then the rest one by one.
template <int J>
__device__ __forceinline__ void attend_keys(const float (&qv)[J][2], float (&acc)[J][2],
                                            float& m, float& l, const Pair& p, int begin,
                                            int end, int lane, int head_dim) {
  constexpr int KB = Keys<J>::KB;
  int key = begin;
  for (; key + KB <= end; key += KB)
    keys_step<J, KB>(qv, acc, m, l, p.kp + key * p.kv_dim, p.vp + key * p.kv_dim, p.kv_dim,
                     lane, head_dim);
  for (; key < end; ++key)
    keys_step<J, 1>(qv, acc, m, l, p.kp + key * p.kv_dim, p.vp + key * p.kv_dim, p.kv_dim, lane,
                    head_dim);
}

template <int J>
__device__ __forceinline__ void attention(const bf16* __restrict__ q, bf16* __restrict__ out,
                                          const unsigned int* __restrict__ row_list, int nrows,
                                          const unsigned int* __restrict__ row_seq,
                                          const unsigned int* __restrict__ positions,
                                          const unsigned long long* __restrict__ seq_table,
                                          int layer, int heads, int kv_heads, int head_dim,
                                          float scale_log2) {
  const int lane = threadIdx.x & 31;
  // nrows · heads fits in an int (the host checks), so no 64-bit division.
  const int warp = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  if (warp >= nrows * heads) return;  // the whole warp leaves together
  const int r = warp / heads, h = warp % heads;
  const unsigned int t = row_list[r];
  const Pair p = locate_pair(q, t, h, row_seq, positions, seq_table, layer, heads, kv_heads,
                             head_dim);
  float qv[J][2], acc[J][2];
  load_query<J>(qv, acc, p.qrow, scale_log2, lane, head_dim);
  float m = -INFINITY, l = 0.0f;
  attend_keys<J>(qv, acc, m, l, p, 0, p.keys, lane, head_dim);

  bf16* orow = out_row(out, t, h, heads, head_dim);
  const float inv = 1.0f / l;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = 64 * j + 2 * lane;
    if (d < head_dim)
      *reinterpret_cast<__nv_bfloat162*>(orow + d) =
          __floats2bfloat162_rn(acc[j][0] * inv, acc[j][1] * inv);
  }
}

// The same attention with the keys of each (row, head) split over the W = blockDim.x/32 warps
// of one block, for decode steps with few rows (flash-decoding, Dao et al. 2023): the one-warp
// kernel above gives a batch-1 step of 32 heads only 32 warps on the whole GPU, each walking
// the whole context. Warp w takes keys [begin + w·c, begin + (w+1)·c), c = ⌈(end − begin)/W⌉,
// and keeps its own running max m_w, sum l_w and unnormalised output acc_w; then, in shared
// memory and in warp order, M = max_w m_w, L = Σ_w 2^(m_w − M)·l_w and
// O = Σ_w 2^(m_w − M)·acc_w (a warp with no keys has m_w = −inf and weight 0; warp 0 always
// has a key when end > begin, so M is finite). Warp 0 returns true with its lanes' share of O
// (dimensions 64j + 2·lane, + 1), and M and L; the other warps return false.
constexpr int SPLIT_WARPS = ROW_THREADS / 32;

template <int J>
__device__ __forceinline__ bool block_keys(const Pair& p, float scale_log2, int head_dim,
                                           int begin, int end, float (&o)[J][2], float& big,
                                           float& total) {
  __shared__ float s_m[SPLIT_WARPS], s_l[SPLIT_WARPS];
  __shared__ float s_acc[SPLIT_WARPS][64 * J];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  float qv[J][2], acc[J][2];
  load_query<J>(qv, acc, p.qrow, scale_log2, lane, head_dim);
  float m = -INFINITY, l = 0.0f;
  const int chunk = (end - begin + SPLIT_WARPS - 1) / SPLIT_WARPS;
  attend_keys<J>(qv, acc, m, l, p, min(end, begin + w * chunk), min(end, begin + (w + 1) * chunk),
                 lane, head_dim);

  if (lane == 0) {
    s_m[w] = m;
    s_l[w] = l;
  }
#pragma unroll
  for (int j = 0; j < J; ++j) {
    s_acc[w][64 * j + 2 * lane] = acc[j][0];
    s_acc[w][64 * j + 2 * lane + 1] = acc[j][1];
  }
  __syncthreads();
  if (w != 0) return false;
  big = -INFINITY;
#pragma unroll
  for (int i = 0; i < SPLIT_WARPS; ++i) big = fmaxf(big, s_m[i]);
  // Each warp's weight 2^(m_w − M) (0 for a warp with no keys) is recomputed where it is used
  // rather than kept in an array.
  total = 0.0f;
#pragma unroll
  for (int i = 0; i < SPLIT_WARPS; ++i) total += exp2f(s_m[i] - big) * s_l[i];
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = 64 * j + 2 * lane;
    float o0 = 0.0f, o1 = 0.0f;
#pragma unroll
    for (int i = 0; i < SPLIT_WARPS; ++i) {
      const float weight = exp2f(s_m[i] - big);
      o0 += weight * s_acc[i][d];
      o1 += weight * s_acc[i][d + 1];
    }
    o[j][0] = o0;
    o[j][1] = o1;
  }
  return true;
}

// One block per (row, head): all its keys over the block's warps, normalised into bf16.
template <int J>
__device__ __forceinline__ void attention_split(
    const bf16* __restrict__ q, bf16* __restrict__ out, const unsigned int* __restrict__ row_list,
    const unsigned int* __restrict__ row_seq, const unsigned int* __restrict__ positions,
    const unsigned long long* __restrict__ seq_table, int layer, int heads, int kv_heads,
    int head_dim, float scale_log2) {
  const int lane = threadIdx.x & 31;
  const int r = blockIdx.x / heads, h = blockIdx.x % heads;
  const unsigned int t = row_list[r];
  const Pair p = locate_pair(q, t, h, row_seq, positions, seq_table, layer, heads, kv_heads,
                             head_dim);
  float o[J][2], big, total;
  if (!block_keys<J>(p, scale_log2, head_dim, 0, p.keys, o, big, total)) return;
  bf16* orow = out_row(out, t, h, heads, head_dim);
  const float inv = __frcp_rn(total);  // = 1.0f / total, without a division subroutine
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = 64 * j + 2 * lane;
    if (d < head_dim)
      *reinterpret_cast<__nv_bfloat162*>(orow + d) =
          __floats2bfloat162_rn(o[j][0] * inv, o[j][1] * inv);
  }
}

// Split-KV ("flash-decoding" over blocks): each (row, head)'s keys split over `splits` blocks
// of 8 warps, for decode steps whose pairs alone leave SMs idle or too few bytes in flight.
// The grid (pairs · splits blocks) and every argument stay fixed while the cache grows (a
// captured decode graph replays them), so each block derives its key range from the row's
// current position: chunk = ⌈keys/splits⌉ rounded up to SPLIT_KEY_ALIGN, split s takes
// [s·chunk, min(keys, (s+1)·chunk)). A short row leaves the last splits empty; they write
// m = −inf, l = 0 and no output, which the combine skips.
//
// Part kernel: block b = pair·splits + s writes, at slot b of the workspace, the block's
// unnormalised output O_s (`parts`, head_dim floats) and its max M_s (log2 units) and sum L_s
// (`stats`, 2 floats), as block_keys computes them.
// Combine kernel: one warp per pair, splits in order (deterministic), the log-sum-exp
// combine in base 2 (the scores are in log2 units): M = max_s M_s, L = Σ_s 2^(M_s − M)·L_s,
// out = Σ_s 2^(M_s − M)·O_s / L. Split 0 always holds key 0, so M is finite and L > 0.
// Two kernels rather than a last-arriving block's combine: no counters to keep at zero across
// graph replays and no fences; the second launch costs ~1-2 µs a layer inside a graph.
constexpr int SPLIT_KEY_ALIGN = 64;

template <int J>
__device__ __forceinline__ void attention_part(
    const bf16* __restrict__ q, float* __restrict__ parts, float* __restrict__ stats,
    const unsigned int* __restrict__ row_list, const unsigned int* __restrict__ row_seq,
    const unsigned int* __restrict__ positions, const unsigned long long* __restrict__ seq_table,
    int layer, int heads, int kv_heads, int head_dim, float scale_log2, int splits) {
  const int lane = threadIdx.x & 31;
  // pairs · splits fits in an int (the host checks).
  const int pair = blockIdx.x / splits, split = blockIdx.x % splits;
  const int r = pair / heads, h = pair % heads;
  const Pair p = locate_pair(q, row_list[r], h, row_seq, positions, seq_table, layer, heads,
                             kv_heads, head_dim);
  // In 64 bits: chunk · split may pass 2^31 on a long row even where keys does not.
  const long long keys = p.keys;
  const long long chunk =
      ((keys + splits - 1) / splits + SPLIT_KEY_ALIGN - 1) & ~(long long)(SPLIT_KEY_ALIGN - 1);
  const long long first = chunk * split;
  const int begin = (int)min(first, keys), end = (int)min(first + chunk, keys);
  const size_t slot = (size_t)blockIdx.x;
  float* st = stats + 2 * slot;
  if (begin >= end) {  // the whole block leaves together, before any barrier
    if (threadIdx.x == 0) {
      st[0] = -INFINITY;
      st[1] = 0.0f;
    }
    return;
  }
  float o[J][2], big, total;
  if (!block_keys<J>(p, scale_log2, head_dim, begin, end, o, big, total)) return;
  float* po = parts + slot * head_dim;
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = 64 * j + 2 * lane;
    if (d < head_dim) *reinterpret_cast<float2*>(po + d) = make_float2(o[j][0], o[j][1]);
  }
  if (lane == 0) {
    st[0] = big;
    st[1] = total;
  }
}

template <int J>
__device__ __forceinline__ void attention_combine(const float* __restrict__ parts,
                                                  const float* __restrict__ stats,
                                                  bf16* __restrict__ out,
                                                  const unsigned int* __restrict__ row_list,
                                                  int nrows, int heads, int head_dim,
                                                  int splits) {
  const int lane = threadIdx.x & 31;
  const int pair = (int)((blockIdx.x * blockDim.x + threadIdx.x) >> 5);
  if (pair >= nrows * heads) return;  // the whole warp leaves together
  const int r = pair / heads, h = pair % heads;
  const float* st = stats + (size_t)pair * splits * 2;
  const float* po = parts + (size_t)pair * splits * head_dim;
  float big = -INFINITY;
  for (int s = 0; s < splits; ++s) big = fmaxf(big, st[2 * s]);
  float total = 0.0f, o[J][2];
#pragma unroll
  for (int j = 0; j < J; ++j) o[j][0] = o[j][1] = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float m = st[2 * s];
    if (m == -INFINITY) continue;  // an empty split: weight 0, and its O was never written
    const float weight = exp2f(m - big);
    total += weight * st[2 * s + 1];
#pragma unroll
    for (int j = 0; j < J; ++j) {
      const int d = 64 * j + 2 * lane;
      if (d < head_dim) {
        const float2 v = *reinterpret_cast<const float2*>(po + (size_t)s * head_dim + d);
        o[j][0] += weight * v.x;
        o[j][1] += weight * v.y;
      }
    }
  }
  bf16* orow = out_row(out, row_list[r], h, heads, head_dim);
  const float inv = __frcp_rn(total);
#pragma unroll
  for (int j = 0; j < J; ++j) {
    const int d = 64 * j + 2 * lane;
    if (d < head_dim)
      *reinterpret_cast<__nv_bfloat162*>(orow + d) =
          __floats2bfloat162_rn(o[j][0] * inv, o[j][1] * inv);
  }
}

}  // namespace attn

// At least 3 blocks per SM (≤ 85 registers): without the bound, ptxas 13.0 gave the head_dim
// 65–128 variant an 8-byte stack frame on sm_80.
#define ATTENTION_SPLIT_KERNEL(J)                                                             \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS, 3) model_attention_split_j##J(     \
      const bf16* q, bf16* out, const unsigned int* row_list, const unsigned int* row_seq,     \
      const unsigned int* positions, const unsigned long long* seq_table, int layer,           \
      int heads, int kv_heads, int head_dim, float scale_log2) {                               \
    attn::attention_split<J>(q, out, row_list, row_seq, positions, seq_table, layer, heads,    \
                             kv_heads, head_dim, scale_log2);                                  \
  }

// HOT: model_attention_split_j1 model_attention_split_j2 model_attention_split_j3
// HOT: model_attention_split_j4
ATTENTION_SPLIT_KERNEL(1)
ATTENTION_SPLIT_KERNEL(2)
ATTENTION_SPLIT_KERNEL(3)
ATTENTION_SPLIT_KERNEL(4)

// The same bound as the split kernel, whose body (block_keys) it shares.
#define ATTENTION_PART_KERNEL(J)                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS, 3) model_attention_part_j##J(      \
      const bf16* q, float* parts, float* stats, const unsigned int* row_list,                 \
      const unsigned int* row_seq, const unsigned int* positions,                              \
      const unsigned long long* seq_table, int layer, int heads, int kv_heads, int head_dim,   \
      float scale_log2, int splits) {                                                          \
    attn::attention_part<J>(q, parts, stats, row_list, row_seq, positions, seq_table, layer,   \
                            heads, kv_heads, head_dim, scale_log2, splits);                    \
  }

// HOT: model_attention_part_j1 model_attention_part_j2 model_attention_part_j3
// HOT: model_attention_part_j4
ATTENTION_PART_KERNEL(1)
ATTENTION_PART_KERNEL(2)
ATTENTION_PART_KERNEL(3)
ATTENTION_PART_KERNEL(4)

#define ATTENTION_COMBINE_KERNEL(J)                                                           \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS) model_attention_combine_j##J(      \
      const float* parts, const float* stats, bf16* out, const unsigned int* row_list,         \
      int nrows, int heads, int head_dim, int splits) {                                        \
    attn::attention_combine<J>(parts, stats, out, row_list, nrows, heads, head_dim, splits);   \
  }

// HOT: model_attention_combine_j1 model_attention_combine_j2 model_attention_combine_j3
// HOT: model_attention_combine_j4
ATTENTION_COMBINE_KERNEL(1)
ATTENTION_COMBINE_KERNEL(2)
ATTENTION_COMBINE_KERNEL(3)
ATTENTION_COMBINE_KERNEL(4)

#define ATTENTION_KERNEL(J)                                                                   \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS) model_attention_j##J(              \
      const bf16* q, bf16* out, const unsigned int* row_list, int nrows,                       \
      const unsigned int* row_seq, const unsigned int* positions,                              \
      const unsigned long long* seq_table, int layer, int heads, int kv_heads, int head_dim,   \
      float scale_log2) {                                                                      \
    attn::attention<J>(q, out, row_list, nrows, row_seq, positions, seq_table, layer, heads,   \
                       kv_heads, head_dim, scale_log2);                                        \
  }

// HOT: model_attention_j1 model_attention_j2 model_attention_j3 model_attention_j4
ATTENTION_KERNEL(1)
ATTENTION_KERNEL(2)
ATTENTION_KERNEL(3)
ATTENTION_KERNEL(4)
