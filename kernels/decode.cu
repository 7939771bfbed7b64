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
// The attention over the cache: kernels/cached_attention.cu.
// CPU references: backend::cpu::ops::{embedding, rms_norm, layer_norm_no_params,
// clamp_in_place, rope, swiglu}; tests in tests/cuda_model.rs and
// tests/cuda_kernels/decode_fused.rs.
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
