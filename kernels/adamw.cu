// Fused mixed-precision AdamW with global grad-norm clipping, no host round trip:
//   1. grad_sumsq_partial (once per gradient tensor): block b writes Σ g² of its grid-stride share
//      to partial[b], in f64. The grid depends only on n, so the sums are deterministic.
//   2. grad_norm_finalize: one block adds all partials in a fixed order and writes
//      clip[0] = ‖g‖ = sqrt(Σ) (as f32) and clip[1] = min(1, max_norm / (‖g‖ + 1e-6)), computed in
//      f32 as torch.nn.utils.clip_grad_norm_ (optim::clip_grad_norm); NaN when ‖g‖ is not finite.
//   3. adamw_bf16 / adamw_f32: read the coefficient from device memory, scale the gradient, and
//      apply torch's AdamW update (optim::AdamW, the order of src/optim/adamw.rs):
//        p ← p·(1 − lr·λ);  m ← m + (1−β1)(g − m)  [lerp];  v ← v·β2 + ((1−β2)·g)·g
//        p ← p + (−lr/(1−β1^t))·m / (√v / √(1−β2^t) + ε)
//      with one IEEE rounding per operation (the _rn intrinsics forbid fused multiply-adds), so
//      the result is bit-identical to the CPU's. A non-finite norm leaves everything untouched
//      (the trainer stops on it). The scaled gradient is not written back.
// bf16 parameters keep fp32 master weights: the master is updated, then rounded to nearest even.
#include "common.cuh"

// Host-computed f32 scalars of one step (optim::adamw StepScalars; mirrored by the Rust
// `AdamWStep`, #[repr(C)]).
struct AdamWScalars {
  float decay;                  // 1 − lr·λ
  float lerp_weight;            // 1 − β1
  float one_minus_lerp_weight;  // 1 − (1 − β1), rounded in f32 as torch's lerp does
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;  // √(1 − β2^t)
  float eps;
  float neg_step_size;  // −lr / (1 − β1^t)
  int lerp_small;       // |1 − β1| < 0.5: torch's lerp takes the `start + w·(end − start)` form
};

__device__ __forceinline__ float adamw_update(const AdamWScalars& s, float p, float g, float& m,
                                              float& v) {
  p = __fmul_rn(p, s.decay);
  if (s.lerp_small)
    m = __fadd_rn(m, __fmul_rn(s.lerp_weight, __fsub_rn(g, m)));
  else
    m = __fsub_rn(g, __fmul_rn(__fsub_rn(g, m), s.one_minus_lerp_weight));
  v = __fadd_rn(__fmul_rn(v, s.beta2), __fmul_rn(__fmul_rn(s.one_minus_beta2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(v), s.bias_correction2_sqrt), s.eps);
  return __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, m), denom));
}

extern "C" __global__ void __launch_bounds__(256)
    grad_sumsq_partial(const float* __restrict__ g, unsigned long long n,
                       double* __restrict__ partial) {
  __shared__ double scratch[32];
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  double acc[4] = {0.0, 0.0, 0.0, 0.0};  // independent chains: f64 adds have long latency
  unsigned long long vec_end = 0;
  if (aligned16(g)) {
    vec_end = n / 4 * 4;
    for (unsigned long long j = tid; j < n / 4; j += stride) {
      float v[4];
      load16(g + j * 4, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) acc[k] += (double)v[k] * (double)v[k];
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) acc[0] += (double)g[i] * (double)g[i];
  const double total = block_sum1((acc[0] + acc[1]) + (acc[2] + acc[3]), scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}

extern "C" __global__ void __launch_bounds__(256)
    grad_norm_finalize(const double* __restrict__ partial, int count, float max_norm,
                       float* __restrict__ clip) {
  __shared__ double scratch[32];
  double acc = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum1(acc, scratch);
  if (threadIdx.x == 0) {
    const float norm = (float)sqrt(acc);
    // clip_coef = (1 / (norm + 1e-6)) · max_norm, in f32, clamped to 1.
    const float coef = __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(norm, 1e-6f)), max_norm);
    clip[0] = norm;
    clip[1] = isfinite(norm) ? fminf(coef, 1.0f) : NAN;
  }
}

extern "C" __global__ void __launch_bounds__(256)
    adamw_bf16(float* __restrict__ master, bf16* __restrict__ param, const float* __restrict__ grad,
               float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq, unsigned long long n,
               const float* __restrict__ clip, AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  const float coef = clip[1];
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long vec_end = 0;
  if (aligned16(master) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq) &&
      (reinterpret_cast<uintptr_t>(param) & 7) == 0) {
    vec_end = n / 4 * 4;
    for (unsigned long long j = tid; j < n / 4; j += stride) {
      float p[4], g[4], m[4], v[4];
      load16(master + j * 4, p);
      load16(grad + j * 4, g);
      load16(exp_avg + j * 4, m);
      load16(exp_avg_sq + j * 4, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) p[k] = adamw_update(s, p[k], __fmul_rn(g[k], coef), m[k], v[k]);
      store16(master + j * 4, p);
      store16(exp_avg + j * 4, m);
      store16(exp_avg_sq + j * 4, v);
      uint2 packed;
      __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&packed);
      h[0] = __floats2bfloat162_rn(p[0], p[1]);
      h[1] = __floats2bfloat162_rn(p[2], p[3]);
      *reinterpret_cast<uint2*>(param + j * 4) = packed;
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) {
    float m = exp_avg[i], v = exp_avg_sq[i];
    const float p = adamw_update(s, master[i], __fmul_rn(grad[i], coef), m, v);
    master[i] = p;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    param[i] = __float2bfloat16_rn(p);
  }
}

extern "C" __global__ void __launch_bounds__(256)
    adamw_f32(float* __restrict__ param, const float* __restrict__ grad,
              float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq, unsigned long long n,
              const float* __restrict__ clip, AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  const float coef = clip[1];
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const unsigned long long tid = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  unsigned long long vec_end = 0;
  if (aligned16(param) && aligned16(grad) && aligned16(exp_avg) && aligned16(exp_avg_sq)) {
    vec_end = n / 4 * 4;
    for (unsigned long long j = tid; j < n / 4; j += stride) {
      float p[4], g[4], m[4], v[4];
      load16(param + j * 4, p);
      load16(grad + j * 4, g);
      load16(exp_avg + j * 4, m);
      load16(exp_avg_sq + j * 4, v);
#pragma unroll
      for (int k = 0; k < 4; ++k) p[k] = adamw_update(s, p[k], __fmul_rn(g[k], coef), m[k], v[k]);
      store16(param + j * 4, p);
      store16(exp_avg + j * 4, m);
      store16(exp_avg_sq + j * 4, v);
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) {
    float m = exp_avg[i], v = exp_avg_sq[i];
    param[i] = adamw_update(s, param[i], __fmul_rn(grad[i], coef), m, v);
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
  }
}
