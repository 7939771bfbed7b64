// Shared helpers of the kernels: bf16 conversion, 16-byte vector loads and stores, and
// deterministic warp/block reductions. Every kernel accumulates in f32 (f64 for the gradient
// norm) whatever its storage type.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

// Threads per block of the row kernels: 8 warps, enough loads in flight per SM with 2+ blocks.
#define ROW_THREADS 256

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
// Round to nearest even, as torch's `.to(torch.bfloat16)` and half::bf16::from_f32.
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float x) { return __float2bfloat16_rn(x); }

// Elements of T in one 16-byte access.
template <typename T>
struct Pack {
  static constexpr int N = 16 / sizeof(T);
};

__device__ __forceinline__ bool aligned16(const void* p) {
  return (reinterpret_cast<uintptr_t>(p) & 15) == 0;
}

// One 16-byte load of T, widened to f32. `p` must be 16-byte aligned.
__device__ __forceinline__ void load16(const float* p, float (&v)[4]) {
  const float4 a = *reinterpret_cast<const float4*>(p);
  v[0] = a.x;
  v[1] = a.y;
  v[2] = a.z;
  v[3] = a.w;
}

__device__ __forceinline__ void load16(const bf16* p, float (&v)[8]) {
  const uint4 a = *reinterpret_cast<const uint4*>(p);
  const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&a);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(h[k]);
    v[2 * k] = f.x;
    v[2 * k + 1] = f.y;
  }
}

// One 16-byte store of f32 values narrowed to T. `p` must be 16-byte aligned.
__device__ __forceinline__ void store16(float* p, const float (&v)[4]) {
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void store16(bf16* p, const float (&v)[8]) {
  uint4 a;
  __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&a);
#pragma unroll
  for (int k = 0; k < 4; ++k) h[k] = __floats2bfloat162_rn(v[2 * k], v[2 * k + 1]);
  *reinterpret_cast<uint4*>(p) = a;
}

// N consecutive f32 values (N a multiple of 4) as N/4 16-byte accesses.
template <int N>
__device__ __forceinline__ void load_f32s(const float* p, float (&v)[N]) {
#pragma unroll
  for (int q = 0; q < N / 4; ++q) {
    const float4 a = reinterpret_cast<const float4*>(p)[q];
    v[4 * q] = a.x;
    v[4 * q + 1] = a.y;
    v[4 * q + 2] = a.z;
    v[4 * q + 3] = a.w;
  }
}

template <int N>
__device__ __forceinline__ void store_f32s(float* p, const float (&v)[N]) {
#pragma unroll
  for (int q = 0; q < N / 4; ++q)
    reinterpret_cast<float4*>(p)[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of K values over the block, returned to every thread. The order of additions depends only
// on blockDim, so the result is the same on every run. `scratch` holds 32*K values.
template <typename F, int K>
__device__ __forceinline__ void block_sum(F (&v)[K], F* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(v[k]);
  __syncthreads();  // the scratch may still be read by a previous call
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) scratch[k * 32 + warp] = v[k];
  }
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < warps ? scratch[k * 32 + lane] : F(0));
}

template <typename F>
__device__ __forceinline__ F block_sum1(F v, F* scratch) {
  F a[1] = {v};
  block_sum<F, 1>(a, scratch);
  return a[0];
}

// Online log-sum-exp state: max m and s = Σ exp(x − m) (Milakov & Gimelshein 2018).
struct Lse {
  float m, s;
};

__device__ __forceinline__ Lse lse_empty() { return {-INFINITY, 0.0f}; }

// Adds a run of values whose maximum is `vmax`; rescales once per run, not once per element.
template <int N>
__device__ __forceinline__ void lse_add(Lse& st, const float (&v)[N], float vmax) {
  const float m = fmaxf(st.m, vmax);
  if (m == -INFINITY) {
    // Only −inf so far, unless fmaxf passed over a NaN: then the state becomes {0, NaN}, which
    // every later add and combine carries to the result (NaN, as the CPU's log-sum-exp gives).
    bool nan = false;
#pragma unroll
    for (int k = 0; k < N; ++k) nan |= isnan(v[k]);
    if (nan) st = {0.0f, NAN};
    return;
  }
  if (m > st.m) {
    st.s *= expf(st.m - m);  // exp(−inf) = 0 on the first finite value
    st.m = m;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) st.s += expf(v[k] - m);
}

__device__ __forceinline__ Lse lse_combine(Lse a, Lse b) {
  const float m = fmaxf(a.m, b.m);
  if (m == -INFINITY) return lse_empty();
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ Lse warp_lse(Lse st) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    Lse other = {__shfl_xor_sync(0xffffffffu, st.m, o), __shfl_xor_sync(0xffffffffu, st.s, o)};
    st = lse_combine(st, other);
  }
  return st;
}

// log Σ exp over the block, returned to every thread. `scratch` holds 64 floats.
__device__ __forceinline__ float block_lse(Lse st, float* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  st = warp_lse(st);
  __syncthreads();
  if (lane == 0) {
    scratch[warp] = st.m;
    scratch[32 + warp] = st.s;
  }
  __syncthreads();
  st = lane < warps ? Lse{scratch[lane], scratch[32 + lane]} : lse_empty();
  st = warp_lse(st);
  return st.m + logf(st.s);
}
