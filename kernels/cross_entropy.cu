// Fused softmax cross-entropy over the vocabulary, one block per row of logits [rows, vocab],
// with per-row weights w (0 = no loss). CPU reference: backend::cpu::backward::cross_entropy.
//   forward  loss[r] = w_r·(lse_r − z_r[t_r]),  lse_r = log Σ_i exp(z_r[i]), in one pass over the
//            row (online max and rescaled sum, Milakov & Gimelshein 2018); lse_r is saved.
//   backward dz_r[i] = w_r·(exp(z_r[i] − lse_r) − [i = t_r]), one pass, from the saved lse.
// No [rows, vocab] probability tensor is ever stored. Rows with w = 0 are not read: their loss and
// lse are 0 and their gradient is 0. A target ≥ vocab gives a NaN loss (never an out-of-bounds
// read) and no one-hot term.
#include "common.cuh"

// 16-byte loads in flight per thread in the forward's pass over a row.
#define CE_LOADS 4

template <typename T>
__device__ __forceinline__ void ce_fwd(const T* __restrict__ logits,
                                       const unsigned int* __restrict__ targets,
                                       const float* __restrict__ weights, float* __restrict__ loss,
                                       float* __restrict__ lse_out, int vocab) {
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[64];
  const int row = blockIdx.x;
  const float w = weights[row];
  if (w == 0.0f) {  // uniform over the block, before any barrier
    if (threadIdx.x == 0) {
      loss[row] = 0.0f;
      lse_out[row] = 0.0f;
    }
    return;
  }
  const T* z = logits + (size_t)row * vocab;
  Lse st = lse_empty();
  if (vocab % N == 0 && aligned16(logits)) {
    // CE_LOADS 16-byte loads issued before any is used (lse_add's branches kept the compiler
    // from hoisting the next iteration's load), then added in the order of the plain loop.
    const int vectors = vocab / N, stride = blockDim.x;
    int j = threadIdx.x;
    for (; j + (CE_LOADS - 1) * stride < vectors; j += CE_LOADS * stride) {
      float v[CE_LOADS][N];
#pragma unroll
      for (int q = 0; q < CE_LOADS; ++q) load16(z + (j + q * stride) * N, v[q]);
#pragma unroll
      for (int q = 0; q < CE_LOADS; ++q) {
        float vmax = v[q][0];
#pragma unroll
        for (int k = 1; k < N; ++k) vmax = fmaxf(vmax, v[q][k]);
        lse_add(st, v[q], vmax);
      }
    }
    for (; j < vectors; j += stride) {
      float v[N];
      load16(z + j * N, v);
      float vmax = v[0];
#pragma unroll
      for (int k = 1; k < N; ++k) vmax = fmaxf(vmax, v[k]);
      lse_add(st, v, vmax);
    }
  } else {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v[1] = {to_float(z[i])};
      lse_add(st, v, v[0]);
    }
  }
  const float lse = block_lse(st, scratch);
  if (threadIdx.x == 0) {
    const unsigned int t = targets[row];
    const float zt = t < (unsigned int)vocab ? to_float(z[t]) : NAN;
    loss[row] = w * (lse - zt);
    lse_out[row] = lse;
  }
}

template <typename T>
__device__ __forceinline__ void ce_bwd(const T* __restrict__ logits,
                                       const unsigned int* __restrict__ targets,
                                       const float* __restrict__ weights,
                                       const float* __restrict__ lse_in, T* __restrict__ d_logits,
                                       int vocab) {
  constexpr int N = Pack<T>::N;
  const int row = blockIdx.x;
  const float w = weights[row];
  const T* z = logits + (size_t)row * vocab;
  T* d = d_logits + (size_t)row * vocab;
  const bool vec = vocab % N == 0 && aligned16(logits) && aligned16(d_logits);
  if (w == 0.0f) {
    if (vec) {
      float zero[N];
#pragma unroll
      for (int k = 0; k < N; ++k) zero[k] = 0.0f;
      for (int j = threadIdx.x; j < vocab / N; j += blockDim.x) store16(d + j * N, zero);
    } else {
      for (int i = threadIdx.x; i < vocab; i += blockDim.x) d[i] = from_float<T>(0.0f);
    }
    return;
  }
  const float lse = lse_in[row];
  const int t = (int)min(targets[row], (unsigned int)vocab);  // vocab: no one-hot term
  if (vec) {
    for (int j = threadIdx.x; j < vocab / N; j += blockDim.x) {
      float v[N];
      load16(z + j * N, v);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = w * expf(v[k] - lse) - (j * N + k == t ? w : 0.0f);
      store16(d + j * N, v);
    }
  } else {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
      d[i] = from_float<T>(w * expf(to_float(z[i]) - lse) - (i == t ? w : 0.0f));
  }
}

// HOT: cross_entropy_fwd_f32 cross_entropy_fwd_bf16 cross_entropy_bwd_f32 cross_entropy_bwd_bf16
#define CE_KERNELS(T, SUF)                                                                     \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                     \
      cross_entropy_fwd_##SUF(const T* logits, const unsigned int* targets,                     \
                              const float* weights, float* loss, float* lse, int vocab) {       \
    ce_fwd<T>(logits, targets, weights, loss, lse, vocab);                                      \
  }                                                                                             \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                     \
      cross_entropy_bwd_##SUF(const T* logits, const unsigned int* targets,                     \
                              const float* weights, const float* lse, T* d_logits, int vocab) { \
    ce_bwd<T>(logits, targets, weights, lse, d_logits, vocab);                                  \
  }

CE_KERNELS(float, f32)
CE_KERNELS(bf16, bf16)
