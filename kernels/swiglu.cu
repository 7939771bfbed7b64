// SwiGLU's gate (Shazeer 2020), element-wise over n values, grid-stride with 16-byte vectors:
//   forward  out = silu(g)·u, silu(g) = g·σ(g), σ(g) = 1/(1 + e^−g)
//   backward du = dy·g·σ(g);  dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))
// CPU references: backend::cpu::ops::swiglu and backend::cpu::backward::swiglu_backward.
#include "common.cuh"

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__device__ __forceinline__ void swiglu_fwd(const T* __restrict__ gate, const T* __restrict__ up,
                                           T* __restrict__ out, unsigned long long n) {
  constexpr int N = Pack<T>::N;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long vec_end = 0;
  if (aligned16(gate) && aligned16(up) && aligned16(out)) {
    vec_end = n / N * N;
    for (unsigned long long j = tid; j < n / N; j += stride) {
      float g[N], u[N];
      load16(gate + j * N, g);
      load16(up + j * N, u);
#pragma unroll
      for (int k = 0; k < N; ++k) g[k] = g[k] * sigmoid(g[k]) * u[k];
      store16(out + j * N, g);
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) {
    const float g = to_float(gate[i]);
    out[i] = from_float<T>(g * sigmoid(g) * to_float(up[i]));
  }
}

template <typename T>
__device__ __forceinline__ void swiglu_bwd(const T* __restrict__ gate, const T* __restrict__ up,
                                           const T* __restrict__ dy, T* __restrict__ d_gate,
                                           T* __restrict__ d_up, unsigned long long n) {
  constexpr int N = Pack<T>::N;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long vec_end = 0;
  if (aligned16(gate) && aligned16(up) && aligned16(dy) && aligned16(d_gate) && aligned16(d_up)) {
    vec_end = n / N * N;
    for (unsigned long long j = tid; j < n / N; j += stride) {
      float g[N], u[N], d[N];
      load16(gate + j * N, g);
      load16(up + j * N, u);
      load16(dy + j * N, d);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float s = sigmoid(g[k]);
        const float du = d[k] * g[k] * s;
        g[k] = d[k] * u[k] * s * (1.0f + g[k] * (1.0f - s));
        u[k] = du;
      }
      store16(d_gate + j * N, g);
      store16(d_up + j * N, u);
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) {
    const float g = to_float(gate[i]), u = to_float(up[i]), d = to_float(dy[i]);
    const float s = sigmoid(g);
    d_up[i] = from_float<T>(d * g * s);
    d_gate[i] = from_float<T>(d * u * s * (1.0f + g * (1.0f - s)));
  }
}

// HOT: swiglu_fwd_f32 swiglu_fwd_bf16 swiglu_bwd_f32 swiglu_bwd_bf16
#define SWIGLU_KERNELS(T, SUF)                                                                \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                    \
      swiglu_fwd_##SUF(const T* gate, const T* up, T* out, unsigned long long n) {             \
    swiglu_fwd<T>(gate, up, out, n);                                                           \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                    \
      swiglu_bwd_##SUF(const T* gate, const T* up, const T* dy, T* d_gate, T* d_up,            \
                       unsigned long long n) {                                                 \
    swiglu_bwd<T>(gate, up, dy, d_gate, d_up, n);                                              \
  }

SWIGLU_KERNELS(float, f32)
SWIGLU_KERNELS(bf16, bf16)
