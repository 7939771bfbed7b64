// RoPE (Su et al. 2021), in place on x of shape [tokens, heads, head_dim]: each pair (a, b) at
// position p and frequency index i becomes (a·cos θ − b·sin θ, b·cos θ + a·sin θ) with
// θ = p · inv_freq[i]. `sign` = −1 rotates by −θ: the transpose of the rotation, i.e. the
// backward. Pairs: (i, i + head_dim/2) for the half-rotation layout (Hugging Face), (2i, 2i+1)
// for the interleaved one (Meta / GGUF). CPU reference: backend::cpu::ops::rope.
//
// `rope<T>` (rope_f32, and rope_bf16 for shapes the vector kernel below does not take): one
// block per token; cos/sin of the token's head_dim/2 angles go to shared memory once and serve
// every head. `rope_bf16_vec`: no shared memory and no barrier, each thread's loads issued
// before its angles are computed. inv_freq comes from the host, computed exactly as the CPU
// reference does.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void rope(T* __restrict__ x, const unsigned int* __restrict__ positions,
                                     const float* __restrict__ inv_freq, int heads, int head_dim,
                                     int interleaved, float sign) {
  constexpr int N = Pack<T>::N;
  extern __shared__ float s_cs[];  // [half] cos, then [half] sin
  const int half = head_dim / 2;
  float* s_cos = s_cs;
  float* s_sin = s_cs + half;
  const float pos = (float)positions[blockIdx.x];
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    float s, c;
    sincosf(pos * inv_freq[i], &s, &c);
    s_cos[i] = c;
    s_sin[i] = sign * s;
  }
  __syncthreads();
  T* tok = x + (size_t)blockIdx.x * heads * head_dim;
  if (half % N == 0 && aligned16(x)) {
    // A unit is N consecutive frequencies of one head: two 16-byte vectors, a and b.
    const int units_per_head = half / N;
    for (int u = threadIdx.x; u < heads * units_per_head; u += blockDim.x) {
      const int h = u / units_per_head, i0 = (u % units_per_head) * N;
      T* head = tok + (size_t)h * head_dim;
      float p[N], q[N];
      if (interleaved) {
        // Elements 2·i0 … 2·i0 + 2N − 1 hold pairs i0 … i0 + N − 1, alternating a, b.
        load16(head + 2 * i0, p);
        load16(head + 2 * i0 + N, q);
#pragma unroll
        for (int k = 0; k < N / 2; ++k) {
          const float c0 = s_cos[i0 + k], s0 = s_sin[i0 + k];
          const float c1 = s_cos[i0 + N / 2 + k], s1 = s_sin[i0 + N / 2 + k];
          const float a0 = p[2 * k], b0 = p[2 * k + 1], a1 = q[2 * k], b1 = q[2 * k + 1];
          p[2 * k] = a0 * c0 - b0 * s0;
          p[2 * k + 1] = b0 * c0 + a0 * s0;
          q[2 * k] = a1 * c1 - b1 * s1;
          q[2 * k + 1] = b1 * c1 + a1 * s1;
        }
        store16(head + 2 * i0, p);
        store16(head + 2 * i0 + N, q);
      } else {
        load16(head + i0, p);
        load16(head + half + i0, q);
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const float c = s_cos[i0 + k], s = s_sin[i0 + k], a = p[k], b = q[k];
          p[k] = a * c - b * s;
          q[k] = b * c + a * s;
        }
        store16(head + i0, p);
        store16(head + half + i0, q);
      }
    }
  } else {
    for (int u = threadIdx.x; u < heads * half; u += blockDim.x) {
      const int h = u / half, i = u % half;
      T* head = tok + (size_t)h * head_dim;
      const int ia = interleaved ? 2 * i : i, ib = interleaved ? 2 * i + 1 : i + half;
      const float a = to_float(head[ia]), b = to_float(head[ib]);
      const float c = s_cos[i], s = s_sin[i];
      head[ia] = from_float<T>(a * c - b * s);
      head[ib] = from_float<T>(b * c + a * s);
    }
  }
}

// HOT: rope_f32 rope_bf16
#define ROPE_KERNEL(T, SUF)                                                                   \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                    \
      rope_##SUF(T* x, const unsigned int* positions, const float* inv_freq, int heads,        \
                 int head_dim, int interleaved, float sign) {                                  \
    rope<T>(x, positions, inv_freq, heads, head_dim, interleaved, sign);                       \
  }

ROPE_KERNEL(float, f32)
ROPE_KERNEL(bf16, bf16)

// Heads per thread of rope_bf16_vec (src/backend/cuda/rope.rs computes its grid from it).
#define ROPE_VEC_HEADS 4

// RoPE in bf16 with head_dim a multiple of 16 and x 16-byte aligned (the launcher checks both).
// A thread owns one chunk of 8 frequencies i0 … i0+7 of one token in ROPE_VEC_HEADS heads (h,
// h + groups, …): the chunk is two 16-byte vectors per head (a at i0 and b at half + i0, or
// the interleaved pairs at 2·i0 and 2·i0 + 8), so all 2·ROPE_VEC_HEADS loads are in flight
// before the 8 sincosf, which then serve every head. The rope<bf16> kernel above took 77% of
// copy bandwidth: per token a dependent chain (position, inv_freq, sincosf, barrier) before
// its only round of 16-byte loads. Lanes run over the chunks first, then the head groups, so a
// warp reads whole 128-byte runs of 4 consecutive heads.
// HOT: rope_bf16_vec
extern "C" __global__ void __launch_bounds__(ROW_THREADS, 2)
    rope_bf16_vec(bf16* __restrict__ x, const unsigned int* __restrict__ positions,
                  const float* __restrict__ inv_freq, int tokens, int heads, int head_dim,
                  int interleaved, float sign) {
  constexpr int H = ROPE_VEC_HEADS;
  const int chunks = head_dim / 16;
  const int groups = (heads + H - 1) / H;
  const unsigned int per_token = (unsigned int)(chunks * groups);
  const unsigned int item = blockIdx.x * blockDim.x + threadIdx.x;
  if (item >= (unsigned int)tokens * per_token) return;
  const unsigned int token = item / per_token, rest = item % per_token;
  const int chunk = (int)(rest % chunks), group = (int)(rest / chunks);
  const int i0 = chunk * 8, half = head_dim / 2;
  const int offset_a = interleaved ? 2 * i0 : i0;
  const int offset_b = interleaved ? 2 * i0 + 8 : half + i0;
  bf16* tok = x + (size_t)token * heads * head_dim;
  uint4 va[H], vb[H];
#pragma unroll
  for (int k = 0; k < H; ++k) {
    const int h = group + k * groups;
    if (h < heads) {
      va[k] = *reinterpret_cast<const uint4*>(tok + (size_t)h * head_dim + offset_a);
      vb[k] = *reinterpret_cast<const uint4*>(tok + (size_t)h * head_dim + offset_b);
    }
  }
  // The 8 angles of the chunk, in the order of the 8 (a, b) pairs of each head.
  const float pos = (float)positions[token];
  const float4 f0 = *reinterpret_cast<const float4*>(inv_freq + i0);
  const float4 f1 = *reinterpret_cast<const float4*>(inv_freq + i0 + 4);
  const float freq[8] = {f0.x, f0.y, f0.z, f0.w, f1.x, f1.y, f1.z, f1.w};
  float c[8], s[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    sincosf(pos * freq[j], &s[j], &c[j]);
    s[j] *= sign;
  }
#pragma unroll
  for (int k = 0; k < H; ++k) {
    const int h = group + k * groups;
    if (h >= heads) continue;
    const __nv_bfloat162* pa = reinterpret_cast<const __nv_bfloat162*>(&va[k]);
    const __nv_bfloat162* pb = reinterpret_cast<const __nv_bfloat162*>(&vb[k]);
    float a[8], b[8];
    if (interleaved) {
      // va holds pairs i0 … i0+3 as (a, b) alternating, vb pairs i0+4 … i0+7.
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 u = __bfloat1622float2(pa[q]), v = __bfloat1622float2(pb[q]);
        a[q] = u.x;
        b[q] = u.y;
        a[4 + q] = v.x;
        b[4 + q] = v.y;
      }
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float2 u = __bfloat1622float2(pa[q]), v = __bfloat1622float2(pb[q]);
        a[2 * q] = u.x;
        a[2 * q + 1] = u.y;
        b[2 * q] = v.x;
        b[2 * q + 1] = v.y;
      }
    }
    float ra[8], rb[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      ra[j] = a[j] * c[j] - b[j] * s[j];
      rb[j] = b[j] * c[j] + a[j] * s[j];
    }
    uint4 oa, ob;
    __nv_bfloat162* qa = reinterpret_cast<__nv_bfloat162*>(&oa);
    __nv_bfloat162* qb = reinterpret_cast<__nv_bfloat162*>(&ob);
    if (interleaved) {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        qa[q] = __floats2bfloat162_rn(ra[q], rb[q]);
        qb[q] = __floats2bfloat162_rn(ra[4 + q], rb[4 + q]);
      }
    } else {
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        qa[q] = __floats2bfloat162_rn(ra[2 * q], ra[2 * q + 1]);
        qb[q] = __floats2bfloat162_rn(rb[2 * q], rb[2 * q + 1]);
      }
    }
    *reinterpret_cast<uint4*>(tok + (size_t)h * head_dim + offset_a) = oa;
    *reinterpret_cast<uint4*>(tok + (size_t)h * head_dim + offset_b) = ob;
  }
}
