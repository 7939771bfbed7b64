// Embedding lookup and its backward. CPU references: backend::cpu::ops::embedding and
// backend::cpu::backward::embedding_backward.
//   forward  out[t, :] = table[ids[t], :]          (one block per token, 16-byte copies)
//   backward d_table[ids[t], :] += dy[t, :], two ways:
//     embedding_bwd_*         f32 atomics: tokens that share an id add in whatever order the
//                             hardware runs them, so repeated ids make the result
//                             non-deterministic in the last bits; each value is added exactly once.
//     embedding_bwd_sorted_*  segmented: the tokens sorted by id (stably, by the host: see
//                             embedding.rs), one block column per touched row, which sums the
//                             row's occurrences in token order in f64 from its old value and
//                             writes it once, rounded once: deterministic, no atomics, and bit for
//                             bit the CPU's f64 sum (backend::cpu::backward::embedding_backward's
//                             order).
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

// Segment b (blockIdx.x) is sorted tokens order[starts[b] .. starts[b+1]), all of id rows[b];
// block column blockIdx.y covers columns [blockIdx.y·4·blockDim.x, …), four a thread (one 16-byte
// f32 access of d_table, 8 or 16 bytes of dy). The f64 sums keep the order of the tokens.
template <typename T>
__device__ __forceinline__ void embedding_bwd_sorted(const unsigned int* __restrict__ order,
                                                     const unsigned int* __restrict__ starts,
                                                     const unsigned int* __restrict__ rows,
                                                     const T* __restrict__ dy,
                                                     float* __restrict__ d_table, int dim) {
  const unsigned int begin = starts[blockIdx.x], end = starts[blockIdx.x + 1];
  float* dst = d_table + (size_t)rows[blockIdx.x] * dim;
  const int col = (blockIdx.y * blockDim.x + threadIdx.x) * 4;
  if (col >= dim) return;
  // dim % 4 == 0 makes every row of dy and d_table start 16-byte aligned after the first.
  const bool vec = dim % 4 == 0 && aligned16(d_table) && (reinterpret_cast<uintptr_t>(dy) &
                                                          (4 * sizeof(T) - 1)) == 0;
  if (vec) {
    const float4 old = *reinterpret_cast<const float4*>(dst + col);
    double acc[4] = {old.x, old.y, old.z, old.w};
#pragma unroll 4
    for (unsigned int k = begin; k < end; ++k) {
      const T* src = dy + (size_t)order[k] * dim + col;
      float g[4];
      if constexpr (sizeof(T) == 4) {
        load16(reinterpret_cast<const float*>(src), g);
      } else {
        const uint2 raw = *reinterpret_cast<const uint2*>(src);
        const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.x));
        const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&raw.y));
        g[0] = lo.x;
        g[1] = lo.y;
        g[2] = hi.x;
        g[3] = hi.y;
      }
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[q] += (double)g[q];
    }
    *reinterpret_cast<float4*>(dst + col) =
        make_float4((float)acc[0], (float)acc[1], (float)acc[2], (float)acc[3]);
  } else {
    for (int c = col; c < min(col + 4, dim); ++c) {
      double acc = dst[c];
      for (unsigned int k = begin; k < end; ++k) acc += (double)to_float(dy[(size_t)order[k] * dim + c]);
      dst[c] = (float)acc;
    }
  }
}

// HOT: embedding_bwd_sorted_f32 embedding_bwd_sorted_bf16
#define EMBEDDING_SORTED_KERNEL(T, SUF)                                                         \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS) embedding_bwd_sorted_##SUF(         \
      const unsigned int* order, const unsigned int* starts, const unsigned int* rows,          \
      const T* dy, float* d_table, int dim) {                                                   \
    embedding_bwd_sorted<T>(order, starts, rows, dy, d_table, dim);                             \
  }

EMBEDDING_SORTED_KERNEL(float, f32)
EMBEDDING_SORTED_KERNEL(bf16, bf16)

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
