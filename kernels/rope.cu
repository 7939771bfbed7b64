// RoPE (Su et al. 2021), in place on x of shape [tokens, heads, head_dim]: each pair (a, b) at
// position p and frequency index i becomes (a·cos θ − b·sin θ, b·cos θ + a·sin θ) with
// θ = p · inv_freq[i]. `sign` = −1 rotates by −θ: the transpose of the rotation, i.e. the
// backward. Pairs: (i, i + head_dim/2) for the half-rotation layout (Hugging Face), (2i, 2i+1)
// for the interleaved one (Meta / GGUF). CPU reference: backend::cpu::ops::rope.
//
// One block per token: cos/sin of the token's head_dim/2 angles go to shared memory once and
// serve every head. inv_freq comes from the host, computed exactly as the CPU reference does.
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
