// The small kernels of the model's forward pass on the GPU (launchers: src/backend/cuda/decode.rs;
// the model: src/model/cuda/): the residual stream stays in f32, matrix-product inputs are bf16,
// the KV cache is bf16.
//   model_embed_f32            out[t, :] = f32(table[ids[t], :])                (bf16 table)
//   model_norm_{bf16,f32}      out[r, :] = norm(x[rows[r], :]): RMSNorm with an f32 weight, or
//                              LayerNorm without parameters (biased variance), in f32
//   model_clamp_bf16           x = clamp(x, −limit, limit) in place (OLMo's clip_qkv; NaN stays)
//   model_kv_append            each new row's k, v into its sequence's cache at its position
//   model_qkv_rope_append      from the fused q|k|v product row: RoPE on q into a contiguous q,
//                              RoPE on k and k, v into the cache (and optionally contiguous k, v)
//   model_swiglu_fused_bf16    act[r, i] = silu(g)·u of the fused gate|up product row
//   model_attention_j{1..4}    causal grouped-query attention of rows against their sequence's
//                              cache: one warp per (row, head), online softmax in f32
//   model_attention_split_j*   the same, each (row, head)'s keys over the 8 warps of one block
//   model_attention_part_j*,   the same, each (row, head)'s keys over several blocks (split-KV):
//   model_attention_combine_j*   partial outputs into a workspace, then their log-sum-exp combine
// CPU references: backend::cpu::ops::{embedding, rms_norm, layer_norm_no_params,
// clamp_in_place, rope, swiglu} and backend::cpu::attention::causal_attention; tests in
// tests/cuda_model.rs and tests/cuda_kernels/decode_fused.rs.
//
// The KV cache of a sequence s is two bf16 buffers of [layers, capacity, kv_heads, head_dim];
// `seq_table` holds three u64 per sequence: the address of its K buffer, of its V buffer, and
// its capacity (in positions). Row t of a forward belongs to sequence row_seq[t] and sits at
// position positions[t]; it sees the keys 0..=positions[t] of its sequence (the row's own k, v
// appended first).
#include "common.cuh"

// One block per token. An id ≥ vocab writes a row of NaN (the host rejects such ids first).
// HOT: model_embed_f32
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    model_embed_f32(const unsigned int* __restrict__ ids, const bf16* __restrict__ table,
                    float* __restrict__ out, int vocab, int dim) {
  const unsigned int id = ids[blockIdx.x];
  float* dst = out + (size_t)blockIdx.x * dim;
  if (id >= (unsigned int)vocab) {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = NAN;
    return;
  }
  const bf16* src = table + (size_t)id * dim;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = to_float(src[i]);
}

// One block per output row r, reading input row rows[r] (so that the final norm also gathers
// the rows whose logits are wanted; a row ≥ x_rows gives NaN). layer_norm = 0: y = x·r·w, r = 1/sqrt(mean(x²) + eps);
// layer_norm = 1: y = (x − mean)/sqrt(var + eps), `w` not read.
template <typename O>
__device__ __forceinline__ void norm_rows(const float* __restrict__ x, int x_rows,
                                          const unsigned int* __restrict__ rows,
                                          const float* __restrict__ w, O* __restrict__ y, int d,
                                          float eps, int layer_norm) {
  __shared__ float scratch[32];
  const unsigned int row = rows[blockIdx.x];
  O* yr = y + (size_t)blockIdx.x * d;
  if (row >= (unsigned int)x_rows) {
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<O>(NAN);
    return;
  }
  const float* xr = x + (size_t)row * d;
  if (layer_norm) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += xr[i];
    const float mean = block_sum1(s, scratch) / (float)d;
    float v = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float c = xr[i] - mean;
      v += c * c;
    }
    const float r = 1.0f / sqrtf(block_sum1(v, scratch) / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<O>((xr[i] - mean) * r);
  } else {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) ss += xr[i] * xr[i];
    const float r = 1.0f / sqrtf(block_sum1(ss, scratch) / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) yr[i] = from_float<O>(xr[i] * r * w[i]);
  }
}

#define NORM_KERNEL(O, SUF)                                                                   \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                    \
      model_norm_##SUF(const float* x, int x_rows, const unsigned int* rows, const float* w,   \
                       O* y, int d, float eps, int layer_norm) {                               \
    norm_rows<O>(x, x_rows, rows, w, y, d, eps, layer_norm);                                   \
  }

// HOT: model_norm_bf16 model_norm_f32
NORM_KERNEL(bf16, bf16)
NORM_KERNEL(float, f32)

// Grid-stride; compares as the CPU reference does, so NaN stays NaN.
// HOT: model_clamp_bf16
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    model_clamp_bf16(bf16* __restrict__ x, unsigned long long n, float limit) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    const float v = to_float(x[i]);
    if (v > limit) {
      x[i] = from_float<bf16>(limit);
    } else if (v < -limit) {
      x[i] = from_float<bf16>(-limit);
    }
  }
}

// One block per new row t: k_new[t], v_new[t] (kv_dim values each) go to position
// positions[t] of layer `layer` of sequence row_seq[t]'s cache. The host guarantees
// positions[t] < capacity.
// HOT: model_kv_append
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    model_kv_append(const bf16* __restrict__ k_new, const bf16* __restrict__ v_new,
                    const unsigned int* __restrict__ row_seq,
                    const unsigned int* __restrict__ positions,
                    const unsigned long long* __restrict__ seq_table, int layer, int kv_dim) {
  const unsigned int t = blockIdx.x;
  const unsigned int s = row_seq[t];
  const unsigned long long cap = seq_table[3 * s + 2];
  const size_t off = ((size_t)layer * cap + positions[t]) * (size_t)kv_dim;
  bf16* kd = reinterpret_cast<bf16*>(seq_table[3 * s]) + off;
  bf16* vd = reinterpret_cast<bf16*>(seq_table[3 * s + 1]) + off;
  const bf16* ks = k_new + (size_t)t * kv_dim;
  const bf16* vs = v_new + (size_t)t * kv_dim;
  for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
    kd[i] = ks[i];
    vd[i] = vs[i];
  }
}

// The fused attention-input product's row t is [q (heads·hd) | k (kv_heads·hd) | v (kv_dim)]
// (row stride `width`, the weights concatenated at load): one block per row does what RoPE on
// q, RoPE on k and the KV append did in three launches, reading the row once. q_out gets the
// rotated q ([rows, heads, hd], contiguous, as attention reads it); the cache of sequence
// row_seq[t] at positions[t] gets the rotated k and v; k_out, v_out (null to skip) get them
// contiguous too ([rows, kv_dim]), for a prefill that runs flash attention over the batch.
// RoPE: the pairs and arithmetic of kernels/rope.cu (cos/sin of the row's angles in shared
// memory, θ = position·inv_freq[i]; pairs (i, i + hd/2), or (2i, 2i + 1) when interleaved),
// the angle reduced to [−π, π] before sincosf (below).
// Dynamic shared memory: hd floats.
namespace fused {

// Rotates one unit (pairs i0..i0+n-1 of one head) from src into dst (and dst2 when not null).
// VEC: n = 8 pairs through 16-byte accesses; otherwise n = 1.
template <bool VEC>
__device__ __forceinline__ void rope_unit(const bf16* __restrict__ src, bf16* __restrict__ dst,
                                          bf16* __restrict__ dst2, int i0, int half,
                                          int interleaved, const float* s_cos,
                                          const float* s_sin) {
  if (VEC) {
    float p[8], q[8];
    if (interleaved) {
      load16(src + 2 * i0, p);
      load16(src + 2 * i0 + 8, q);
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const float c0 = s_cos[i0 + k], s0 = s_sin[i0 + k];
        const float c1 = s_cos[i0 + 4 + k], s1 = s_sin[i0 + 4 + k];
        const float a0 = p[2 * k], b0 = p[2 * k + 1], a1 = q[2 * k], b1 = q[2 * k + 1];
        p[2 * k] = a0 * c0 - b0 * s0;
        p[2 * k + 1] = b0 * c0 + a0 * s0;
        q[2 * k] = a1 * c1 - b1 * s1;
        q[2 * k + 1] = b1 * c1 + a1 * s1;
      }
      store16(dst + 2 * i0, p);
      store16(dst + 2 * i0 + 8, q);
      if (dst2) {
        store16(dst2 + 2 * i0, p);
        store16(dst2 + 2 * i0 + 8, q);
      }
    } else {
      load16(src + i0, p);
      load16(src + half + i0, q);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float c = s_cos[i0 + k], s = s_sin[i0 + k], a = p[k], b = q[k];
        p[k] = a * c - b * s;
        q[k] = b * c + a * s;
      }
      store16(dst + i0, p);
      store16(dst + half + i0, q);
      if (dst2) {
        store16(dst2 + i0, p);
        store16(dst2 + half + i0, q);
      }
    }
  } else {
    const int ia = interleaved ? 2 * i0 : i0, ib = interleaved ? 2 * i0 + 1 : i0 + half;
    const float a = to_float(src[ia]), b = to_float(src[ib]);
    const float c = s_cos[i0], s = s_sin[i0];
    const bf16 ra = from_float<bf16>(a * c - b * s), rb = from_float<bf16>(b * c + a * s);
    dst[ia] = ra;
    dst[ib] = rb;
    if (dst2) {
      dst2[ia] = ra;
      dst2[ib] = rb;
    }
  }
}

template <bool VEC>
__device__ __forceinline__ void qkv_row(const bf16* __restrict__ row, bf16* __restrict__ qo,
                                        bf16* __restrict__ kd, bf16* __restrict__ vd,
                                        bf16* __restrict__ ko, bf16* __restrict__ vo, int heads,
                                        int kv_heads, int head_dim, int interleaved,
                                        const float* s_cos, const float* s_sin) {
  const int half = head_dim / 2;
  const int per_head = VEC ? half / 8 : half;  // units per head
  const int n = VEC ? 8 : 1;
  for (int u = threadIdx.x; u < (heads + kv_heads) * per_head; u += blockDim.x) {
    const int h = u / per_head, i0 = (u % per_head) * n;
    const bf16* src = row + (size_t)h * head_dim;
    if (h < heads) {
      rope_unit<VEC>(src, qo + (size_t)h * head_dim, nullptr, i0, half, interleaved, s_cos,
                     s_sin);
    } else {
      const size_t at = (size_t)(h - heads) * head_dim;
      rope_unit<VEC>(src, kd + at, ko ? ko + at : nullptr, i0, half, interleaved, s_cos, s_sin);
    }
  }
  const int kv_dim = kv_heads * head_dim;
  const bf16* vs = row + (size_t)(heads + kv_heads) * head_dim;
  if (VEC) {
    const uint4* src = reinterpret_cast<const uint4*>(vs);
    for (int i = threadIdx.x; i < kv_dim / 8; i += blockDim.x) {
      const uint4 x = src[i];
      reinterpret_cast<uint4*>(vd)[i] = x;
      if (vo) reinterpret_cast<uint4*>(vo)[i] = x;
    }
  } else {
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
      vd[i] = vs[i];
      if (vo) vo[i] = vs[i];
    }
  }
}

}  // namespace fused

// HOT: model_qkv_rope_append
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    model_qkv_rope_append(const bf16* __restrict__ qkv, int width, bf16* __restrict__ q_out,
                          bf16* __restrict__ k_out, bf16* __restrict__ v_out,
                          const unsigned int* __restrict__ row_seq,
                          const unsigned int* __restrict__ positions,
                          const unsigned long long* __restrict__ seq_table, int layer,
                          const float* __restrict__ inv_freq, int heads, int kv_heads,
                          int head_dim, int interleaved) {
  extern __shared__ float s_cs[];  // [half] cos, then [half] sin
  const int half = head_dim / 2;
  float* s_cos = s_cs;
  float* s_sin = s_cs + half;
  const unsigned int t = blockIdx.x;
  const float pos = (float)positions[t];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    // The f32 angle θ = position·inv_freq (as rope.cu and the CPU reference form it), reduced
    // to [−π, π] in f64 (error ≤ |θ|·2^-52, then one f32 rounding) so that sincosf has no
    // large-argument path, whose local array gave this kernel a stack frame.
    const float theta = pos * inv_freq[i];
    const double turns = rint((double)theta * 0.15915494309189535);  // θ / 2π
    const float r = (float)fma(-turns, 6.283185307179586, (double)theta);
    __builtin_assume(fabsf(r) <= 3.2f);
    float s, c;
    sincosf(r, &s, &c);
    s_cos[i] = c;
    s_sin[i] = s;
  }
  __syncthreads();
  const int kv_dim = kv_heads * head_dim;
  const unsigned int s = row_seq[t];
  const unsigned long long cap = seq_table[3 * s + 2];
  const size_t off = ((size_t)layer * cap + positions[t]) * (size_t)kv_dim;
  bf16* kd = reinterpret_cast<bf16*>(seq_table[3 * s]) + off;
  bf16* vd = reinterpret_cast<bf16*>(seq_table[3 * s + 1]) + off;
  const bf16* row = qkv + (size_t)t * width;
  bf16* qo = q_out + (size_t)t * heads * head_dim;
  bf16* ko = k_out ? k_out + (size_t)t * kv_dim : nullptr;
  bf16* vo = v_out ? v_out + (size_t)t * kv_dim : nullptr;
  // 16-byte accesses when every head starts on a 16-byte boundary (head_dim % 16 == 0 and
  // aligned bases: then the row stride, the cache offsets and the heads are too).
  const bool vec = head_dim % 16 == 0 && width % 8 == 0 && aligned16(qkv) && aligned16(q_out) &&
                   aligned16(kd) && aligned16(vd) && (!ko || aligned16(ko)) &&
                   (!vo || aligned16(vo));
  if (vec)
    fused::qkv_row<true>(row, qo, kd, vd, ko, vo, heads, kv_heads, head_dim, interleaved, s_cos,
                         s_sin);
  else
    fused::qkv_row<false>(row, qo, kd, vd, ko, vo, heads, kv_heads, head_dim, interleaved, s_cos,
                          s_sin);
}

// act[r, i] = silu(gu[r, i])·gu[r, ffn + i] for the fused gate|up product ([rows, 2·ffn]),
// i < ffn: swiglu.cu's arithmetic (silu(g) = g·σ(g), σ(g) = 1/(1 + e^−g), f32) reading the two
// halves of each row in place. Grid-stride over 8-value units when ffn % 8 == 0 and the
// buffers are 16-byte aligned, over values otherwise.
// HOT: model_swiglu_fused_bf16
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    model_swiglu_fused_bf16(const bf16* __restrict__ gu, bf16* __restrict__ act,
                            unsigned long long rows, int ffn) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  const unsigned long long f = (unsigned long long)ffn;
  if (ffn % 8 == 0 && aligned16(gu) && aligned16(act)) {
    const unsigned long long units = rows * (f / 8);
    for (unsigned long long j = tid; j < units; j += stride) {
      const unsigned long long r = j / (f / 8), i = (j % (f / 8)) * 8;
      float g[8], u[8];
      load16(gu + r * 2 * f + i, g);
      load16(gu + r * 2 * f + f + i, u);
#pragma unroll
      for (int k = 0; k < 8; ++k) g[k] = g[k] * (1.0f / (1.0f + expf(-g[k]))) * u[k];
      store16(act + r * f + i, g);
    }
  } else {
    for (unsigned long long j = tid; j < rows * f; j += stride) {
      const unsigned long long r = j / f, i = j % f;
      const float g = to_float(gu[r * 2 * f + i]);
      act[j] = from_float<bf16>(g * (1.0f / (1.0f + expf(-g))) * to_float(gu[r * 2 * f + f + i]));
    }
  }
}

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
