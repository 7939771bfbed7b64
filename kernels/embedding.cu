// Embedding lookup and its backward. CPU references: backend::cpu::ops::embedding and
// backend::cpu::backward::embedding_backward.
//   forward  out[t, :] = table[ids[t], :]          (one block per token, 16-byte copies)
//   backward d_table[ids[t], :] += dy[t, :]        (f32 atomics: tokens that share an id add in
//            whatever order the hardware runs them, so repeated ids make the result
//            non-deterministic in the last bits; each value is added exactly once)
// An id ≥ vocab writes a row of NaN in the forward (never reading outside the table) and is
// skipped in the backward.
#include "common.cuh"

template <typename T>
__device__ __forceinline__ void embedding_fwd(const unsigned int* __restrict__ ids,
                                              const T* __restrict__ table, T* __restrict__ out,
                                              int vocab, int dim) {
  constexpr int N = Pack<T>::N;
  const unsigned int id = ids[blockIdx.x];
  T* dst = out + (size_t)blockIdx.x * dim;
  if (id >= (unsigned int)vocab) {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = from_float<T>(NAN);
    return;
  }
  const T* src = table + (size_t)id * dim;
  if (dim % N == 0 && aligned16(table) && aligned16(out)) {
    for (int j = threadIdx.x; j < dim / N; j += blockDim.x)
      reinterpret_cast<uint4*>(dst)[j] = reinterpret_cast<const uint4*>(src)[j];
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) dst[i] = src[i];
  }
}

template <typename T>
__device__ __forceinline__ void embedding_bwd(const unsigned int* __restrict__ ids,
                                              const T* __restrict__ dy,
                                              float* __restrict__ d_table, int vocab, int dim) {
  constexpr int N = Pack<T>::N;
  const unsigned int id = ids[blockIdx.x];
  if (id >= (unsigned int)vocab) return;
  const T* src = dy + (size_t)blockIdx.x * dim;
  float* dst = d_table + (size_t)id * dim;
  if (dim % N == 0 && aligned16(dy)) {
    for (int j = threadIdx.x; j < dim / N; j += blockDim.x) {
      float g[N];
      load16(src + j * N, g);
#pragma unroll
      for (int k = 0; k < N; ++k) atomicAdd(dst + j * N + k, g[k]);
    }
  } else {
    for (int i = threadIdx.x; i < dim; i += blockDim.x) atomicAdd(dst + i, to_float(src[i]));
  }
}

// HOT: embedding_fwd_f32 embedding_fwd_bf16 embedding_bwd_f32 embedding_bwd_bf16
#define EMBEDDING_KERNELS(T, SUF)                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS) embedding_fwd_##SUF(               \
      const unsigned int* ids, const T* table, T* out, int vocab, int dim) {                   \
    embedding_fwd<T>(ids, table, out, vocab, dim);                                             \
  }                                                                                            \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS) embedding_bwd_##SUF(               \
      const unsigned int* ids, const T* dy, float* d_table, int vocab, int dim) {              \
    embedding_bwd<T>(ids, dy, d_table, vocab, dim);                                            \
  }

EMBEDDING_KERNELS(float, f32)
EMBEDDING_KERNELS(bf16, bf16)
