// Skinny products for decoding: C[m, n] (+)= Σ_k A[m, k]·B[n, k] (the NT layout, B a weight
// stored [out, in]) when m is at most GEMV_MAX_ROWS. The tiled GEMM (gemm.cu) covers 128 rows
// of C per block, so at m = 1..8 it launches only n/128 blocks and most of the GPU waits; a
// decode step's products are bound by reading B once (2·n·k bytes), not by arithmetic. Here
// each warp owns output columns and streams its rows of B with 16-byte loads, all m rows of A
// against each (A is small and stays in L1/L2), f32 sums reduced across the warp by shuffles
// in a fixed order (deterministic). Needs k % 8 == 0 and 16-byte aligned A and B (gemm.rs
// checks and otherwise uses the tiled kernel). CPU reference: tests/cuda_kernels/gemm.rs.
#include "common.cuh"

#define GEMV_MAX_ROWS 8
#define GEMV_WARPS 8

template <typename OutT>
__device__ __forceinline__ void gemv_nt(const bf16* __restrict__ A, const bf16* __restrict__ B,
                                        OutT* __restrict__ C, int M, int N, int K,
                                        int accumulate) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int batch = blockIdx.z;
  A += (size_t)batch * M * K;
  B += (size_t)batch * N * K;
  C += (size_t)batch * M * N;
  // Grid-stride over columns: one warp per column at a time.
  for (int col = blockIdx.x * GEMV_WARPS + warp; col < N; col += gridDim.x * GEMV_WARPS) {
    const bf16* b = B + (size_t)col * K;
    float acc[GEMV_MAX_ROWS];
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) acc[r] = 0.0f;
    for (int k = lane * 8; k < K; k += 32 * 8) {
      float w[8];
      load16(b + k, w);
#pragma unroll
      for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
        if (r < M) {
          float x[8];
          load16(A + (size_t)r * K + k, x);
#pragma unroll
          for (int i = 0; i < 8; ++i) acc[r] = fmaf(x[i], w[i], acc[r]);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < GEMV_MAX_ROWS; ++r) {
      float v = acc[r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      if (lane == 0 && r < M) {
        OutT* c = C + (size_t)r * N + col;
        *c = from_float<OutT>(accumulate ? to_float(*c) + v : v);
      }
    }
  }
}

// Launch: block 32·GEMV_WARPS, grid (blocks over the columns, 1, batch).
// HOT: gemv_nt_bf16
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_nt_bf16(const bf16* __restrict__ A, const bf16* __restrict__ B, bf16* __restrict__ C,
                 int M, int N, int K, int accumulate) {
  gemv_nt<bf16>(A, B, C, M, N, K, accumulate);
}

// HOT: gemv_nt_f32
extern "C" __global__ void __launch_bounds__(32 * GEMV_WARPS)
    gemv_nt_f32(const bf16* __restrict__ A, const bf16* __restrict__ B, float* __restrict__ C,
                int M, int N, int K, int accumulate) {
  gemv_nt<float>(A, B, C, M, N, K, accumulate);
}
