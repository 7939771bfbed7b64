// Element-wise helpers of the training step, over n values, grid-stride with 16-byte vectors
// where every pointer is 16-byte aligned, then a scalar tail:
//   convert_f32_to_bf16   y = bf16(x), round to nearest even
//   convert_bf16_to_f32   y = f32(x) (exact)
//   add_f32_in_place      y = y + x
//   clamp_backward_bf16   dy = dy·[−limit ≤ x ≤ limit], in place: the gradient of
//                         clamp(x, −limit, limit); zero where x is NaN or outside, bits of dy
//                         kept elsewhere
// CPU references: `as` conversions / half::bf16::from_f32, and
// backend::cpu::backward::clamp_backward.
#include "common.cuh"

#define GRID_STRIDE_SETUP                                                                   \
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;             \
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; \
  unsigned long long vec_end = 0;

// HOT: convert_f32_to_bf16
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    convert_f32_to_bf16(const float* __restrict__ x, bf16* __restrict__ y, unsigned long long n) {
  GRID_STRIDE_SETUP
  if (aligned16(x) && aligned16(y)) {
    vec_end = n / 8 * 8;
    for (unsigned long long j = tid; j < n / 8; j += stride) {
      float lo[4], hi[4], v[8];
      load16(x + j * 8, lo);
      load16(x + j * 8 + 4, hi);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        v[e] = lo[e];
        v[4 + e] = hi[e];
      }
      store16(y + j * 8, v);
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) y[i] = from_float<bf16>(x[i]);
}

// HOT: convert_bf16_to_f32
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    convert_bf16_to_f32(const bf16* __restrict__ x, float* __restrict__ y, unsigned long long n) {
  GRID_STRIDE_SETUP
  if (aligned16(x) && aligned16(y)) {
    vec_end = n / 8 * 8;
    for (unsigned long long j = tid; j < n / 8; j += stride) {
      float v[8], lo[4], hi[4];
      load16(x + j * 8, v);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        lo[e] = v[e];
        hi[e] = v[4 + e];
      }
      store16(y + j * 8, lo);
      store16(y + j * 8 + 4, hi);
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) y[i] = to_float(x[i]);
}

// HOT: add_f32_in_place
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    add_f32_in_place(float* __restrict__ y, const float* __restrict__ x, unsigned long long n) {
  GRID_STRIDE_SETUP
  if (aligned16(x) && aligned16(y)) {
    vec_end = n / 4 * 4;
    for (unsigned long long j = tid; j < n / 4; j += stride) {
      float a[4], b[4];
      load16(y + j * 4, a);
      load16(x + j * 4, b);
#pragma unroll
      for (int e = 0; e < 4; ++e) a[e] += b[e];
      store16(y + j * 4, a);
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) y[i] += x[i];
}

// As the CPU reference: the comparisons are false for a NaN x (or limit), so the gradient is 0.
__device__ __forceinline__ bool inside(float x, float limit) { return x >= -limit && x <= limit; }

// Two bf16 gradients in one word (element 2e in the low half), each zeroed where its x is out.
__device__ __forceinline__ unsigned int keep_pair(unsigned int pair, float x_lo, float x_hi,
                                                  float limit) {
  if (!inside(x_lo, limit)) pair &= 0xffff0000u;
  if (!inside(x_hi, limit)) pair &= 0x0000ffffu;
  return pair;
}

// HOT: clamp_backward_bf16
extern "C" __global__ void __launch_bounds__(ROW_THREADS)
    clamp_backward_bf16(const bf16* __restrict__ x, bf16* __restrict__ dy, unsigned long long n,
                        float limit) {
  GRID_STRIDE_SETUP
  if (aligned16(x) && aligned16(dy)) {
    vec_end = n / 8 * 8;
    for (unsigned long long j = tid; j < n / 8; j += stride) {
      float xv[8];
      load16(x + j * 8, xv);
      uint4 g = *reinterpret_cast<const uint4*>(dy + j * 8);
      g.x = keep_pair(g.x, xv[0], xv[1], limit);
      g.y = keep_pair(g.y, xv[2], xv[3], limit);
      g.z = keep_pair(g.z, xv[4], xv[5], limit);
      g.w = keep_pair(g.w, xv[6], xv[7], limit);
      *reinterpret_cast<uint4*>(dy + j * 8) = g;
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) {
    if (!inside(to_float(x[i]), limit)) dy[i] = from_float<bf16>(0.0f);
  }
}
