// Helpers shared by the norm backwards of kernels/norm.cu (RMSNorm) and kernels/layernorm.cu
// (LayerNorm): where dx goes (store_dx) and how a thread's columns of a row are loaded
// (load_cols, and load_cols_unbranched for loads that all issue before the first use).
#pragma once
#include "common.cuh"

// store_dx's 16-byte path: one access of dx (two when accumulating) and one of dx_bf16.
template <typename T, int N>
__device__ __forceinline__ void store_dx_vec(T* __restrict__ dx, bf16* __restrict__ dx_bf16,
                                             int accumulate, size_t off, float (&v)[N]) {
  if (accumulate) {
    float old[N];
    load16(dx + off, old);
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] += old[k];
  }
  store16(dx + off, v);
  if (dx_bf16 != nullptr) {
    __nv_bfloat162 h[N / 2];
#pragma unroll
    for (int k = 0; k < N / 2; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
    if constexpr (N == 8) {
      *reinterpret_cast<uint4*>(dx_bf16 + off) = *reinterpret_cast<const uint4*>(h);
    } else {
      *reinterpret_cast<uint2*>(dx_bf16 + off) = *reinterpret_cast<const uint2*>(h);
    }
  }
}

// Where a norm backward's dx goes: dx = result, or dx += result (the residual stream's gradient,
// so no separate add pass), and optionally also rounded to bf16 into dx_bf16 (the next matrix
// product's input, so no separate cast pass). N values at column `col` of one row; `vec` as the
// caller's 16-byte path, taken only when dx_bf16 (if given) is 2N-byte aligned too.
template <typename T, int N>
__device__ __forceinline__ void store_dx(T* __restrict__ dx, bf16* __restrict__ dx_bf16,
                                         int accumulate, size_t off, int valid, bool vec,
                                         float (&v)[N]) {
  if constexpr (N == Pack<T>::N) {
    if (vec) {
      store_dx_vec(dx, dx_bf16, accumulate, off, v);
      return;
    }
  }
  for (int k = 0; k < valid; ++k) {
    float out = v[k];
    if (accumulate) out += to_float(dx[off + k]);
    dx[off + k] = from_float<T>(out);
    if (dx_bf16 != nullptr) dx_bf16[off + k] = __float2bfloat16_rn(out);
  }
}

// N values of a row at column `col` (zeros past d), by one 16-byte access when `vec`.
template <typename T, int N>
__device__ __forceinline__ void load_cols(const T* __restrict__ p, int col, int d, bool vec,
                                          float (&v)[N]) {
  if (vec && col < d) {
    load16(p + col, v);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = col + k < d ? to_float(p[col + k]) : 0.0f;
  }
}

// N values of a row at column `col`. VEC (16-byte path): one access with no branch around it, a
// column past d re-reading column 0 for the caller to discard, so that all of a thread's loads
// issue before the first use; a load under a branch whose result is used inside it (load_cols)
// makes the thread wait for each load in turn. Else load_cols' scalar path (zeros past d).
template <typename T, int N, bool VEC>
__device__ __forceinline__ void load_cols_unbranched(const T* __restrict__ p, int col, int d,
                                                     float (&v)[N]) {
  if constexpr (VEC) {
    load16(p + (col < d ? col : 0), v);
  } else {
    load_cols(p, col, d, false, v);
  }
}
