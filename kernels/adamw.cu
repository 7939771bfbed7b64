// Fused mixed-precision AdamW with global grad-norm clipping, no host round trip:
//   1. grad_sumsq_multi (once for all gradient tensors, at the end of the file): block b writes
//      Σ g² of chunk b to partial[b], in f64. The chunks depend only on the tensors' lengths, so
//      the sums are deterministic.
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
//   4. adamw_bf16_sr (`--optimizer-state bf16`): no master; the same update in f32 from the bf16
//      parameter and bf16 moments (widened exactly), then parameter, m and v each written back
//      to bf16 with stochastic rounding (optim::adamw_bf16_stochastic_step, bit for bit).
//   5. adamw_multi_*: each of the three updates for all parameters of a step in one launch.
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

// Stochastic rounding (src/optim/stochastic.rs): splitmix64's output function over the counter
// key + (i + 1)·γ gives element i 64 random bits, 16 each for the parameter, m and v.
__device__ __forceinline__ unsigned long long sr_bits(unsigned long long key,
                                                      unsigned long long i) {
  unsigned long long z = key + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// x to bf16 bits, rounded away from zero with probability (dropped bits)/2^16: add 16 random
// bits below bf16's mantissa and truncate. Infinities stay; NaN stays NaN (quieted, as
// half::bf16::from_f32).
__device__ __forceinline__ unsigned int sr_bf16(float x, unsigned int r) {
  const unsigned int b = __float_as_uint(x);
  if ((b & 0x7F800000u) == 0x7F800000u) return (b >> 16) | ((b & 0x007FFFFFu) ? 0x40u : 0u);
  return (b + (r & 0xFFFFu)) >> 16;
}

__device__ __forceinline__ float bf16_bits_to_float(unsigned int h) {
  return __uint_as_float(h << 16);
}

// Σ g² over the block's threads' share of g[0, n) (threads tid, tid + stride, …), in f64.
__device__ __forceinline__ double sumsq_range(const float* __restrict__ g, unsigned long long n,
                                              unsigned long long tid, unsigned long long stride,
                                              double* scratch) {
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
  return block_sum1((acc[0] + acc[1]) + (acc[2] + acc[3]), scratch);
}

// HOT: grad_norm_finalize
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

// The update of elements [0, n) of one tensor by threads tid, tid + stride, … (the per-tensor
// kernels' grid, or one block of the multi-tensor kernels over one chunk).
__device__ __forceinline__ void adamw_bf16_range(float* __restrict__ master,
                                                 bf16* __restrict__ param,
                                                 const float* __restrict__ grad,
                                                 float* __restrict__ exp_avg,
                                                 float* __restrict__ exp_avg_sq,
                                                 unsigned long long n, float coef,
                                                 const AdamWScalars& s, unsigned long long tid,
                                                 unsigned long long stride) {
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

// HOT: adamw_bf16
extern "C" __global__ void __launch_bounds__(256)
    adamw_bf16(float* __restrict__ master, bf16* __restrict__ param, const float* __restrict__ grad,
               float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq, unsigned long long n,
               const float* __restrict__ clip, AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  adamw_bf16_range(master, param, grad, exp_avg, exp_avg_sq, n, clip[1], s,
                   (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x,
                   (unsigned long long)gridDim.x * blockDim.x);
}

__device__ __forceinline__ void adamw_f32_range(float* __restrict__ param,
                                                const float* __restrict__ grad,
                                                float* __restrict__ exp_avg,
                                                float* __restrict__ exp_avg_sq,
                                                unsigned long long n, float coef,
                                                const AdamWScalars& s, unsigned long long tid,
                                                unsigned long long stride) {
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

// HOT: adamw_f32
extern "C" __global__ void __launch_bounds__(256)
    adamw_f32(float* __restrict__ param, const float* __restrict__ grad,
              float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq, unsigned long long n,
              const float* __restrict__ clip, AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  adamw_f32_range(param, grad, exp_avg, exp_avg_sq, n, clip[1], s,
                  (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x,
                  (unsigned long long)gridDim.x * blockDim.x);
}

// Element i: p, m, v from bf16 (the low or high half of the 32-bit word they are read in), the
// f32 update as adamw_bf16's, each written back stochastically rounded.
__device__ __forceinline__ void adamw_sr_element(const AdamWScalars& s, unsigned long long key,
                                                 unsigned long long i, float g, unsigned int& p,
                                                 unsigned int& m, unsigned int& v) {
  float mf = bf16_bits_to_float(m), vf = bf16_bits_to_float(v);
  const float pf = adamw_update(s, bf16_bits_to_float(p), g, mf, vf);
  const unsigned long long r = sr_bits(key, i);
  p = sr_bf16(pf, (unsigned int)r);
  m = sr_bf16(mf, (unsigned int)(r >> 16));
  v = sr_bf16(vf, (unsigned int)(r >> 32));
}

// Elements [0, n) of a tensor whose element 0 is element `first` of the whole tensor (the
// random bits are drawn by that index).
__device__ __forceinline__ void adamw_bf16_sr_range(bf16* __restrict__ param,
                                                    const float* __restrict__ grad,
                                                    bf16* __restrict__ exp_avg,
                                                    bf16* __restrict__ exp_avg_sq,
                                                    unsigned long long n, float coef,
                                                    const AdamWScalars& s, unsigned long long key,
                                                    unsigned long long first,
                                                    unsigned long long tid,
                                                    unsigned long long stride) {
  unsigned short* const p16 = reinterpret_cast<unsigned short*>(param);
  unsigned short* const m16 = reinterpret_cast<unsigned short*>(exp_avg);
  unsigned short* const v16 = reinterpret_cast<unsigned short*>(exp_avg_sq);
  unsigned long long vec_end = 0;
  const uintptr_t bf16_addresses = reinterpret_cast<uintptr_t>(param) |
                                 reinterpret_cast<uintptr_t>(exp_avg) |
                                 reinterpret_cast<uintptr_t>(exp_avg_sq);
  if (aligned16(grad) && (bf16_addresses & 7) == 0) {
    vec_end = n / 4 * 4;
    for (unsigned long long j = tid; j < n / 4; j += stride) {
      float g[4];
      load16(grad + j * 4, g);
      const uint2 pw = *reinterpret_cast<const uint2*>(p16 + j * 4);
      const uint2 mw = *reinterpret_cast<const uint2*>(m16 + j * 4);
      const uint2 vw = *reinterpret_cast<const uint2*>(v16 + j * 4);
      // Element 4j + k sits in the low half of word k/2 for even k (little-endian).
      unsigned int p[4] = {pw.x & 0xFFFFu, pw.x >> 16, pw.y & 0xFFFFu, pw.y >> 16};
      unsigned int m[4] = {mw.x & 0xFFFFu, mw.x >> 16, mw.y & 0xFFFFu, mw.y >> 16};
      unsigned int v[4] = {vw.x & 0xFFFFu, vw.x >> 16, vw.y & 0xFFFFu, vw.y >> 16};
#pragma unroll
      for (int k = 0; k < 4; ++k)
        adamw_sr_element(s, key, first + j * 4 + k, __fmul_rn(g[k], coef), p[k], m[k], v[k]);
      *reinterpret_cast<uint2*>(p16 + j * 4) = make_uint2(p[0] | (p[1] << 16), p[2] | (p[3] << 16));
      *reinterpret_cast<uint2*>(m16 + j * 4) = make_uint2(m[0] | (m[1] << 16), m[2] | (m[3] << 16));
      *reinterpret_cast<uint2*>(v16 + j * 4) = make_uint2(v[0] | (v[1] << 16), v[2] | (v[3] << 16));
    }
  }
  for (unsigned long long i = vec_end + tid; i < n; i += stride) {
    unsigned int p = p16[i], m = m16[i], v = v16[i];
    adamw_sr_element(s, key, first + i, __fmul_rn(grad[i], coef), p, m, v);
    p16[i] = (unsigned short)p;
    m16[i] = (unsigned short)m;
    v16[i] = (unsigned short)v;
  }
}

// HOT: adamw_bf16_sr
extern "C" __global__ void __launch_bounds__(256)
    adamw_bf16_sr(bf16* __restrict__ param, const float* __restrict__ grad,
                  bf16* __restrict__ exp_avg, bf16* __restrict__ exp_avg_sq, unsigned long long n,
                  const float* __restrict__ clip, AdamWScalars s, unsigned long long key) {
  if (!isfinite(clip[0])) return;
  adamw_bf16_sr_range(param, grad, exp_avg, exp_avg_sq, n, clip[1], s, key, 0,
                      (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x,
                      (unsigned long long)gridDim.x * blockDim.x);
}

// Multi-tensor AdamW: one launch for every parameter of a step. Block b updates chunk b,
// elements [start, start + ADAMW_CHUNK) of tensor chunks[b].tensor (fewer at its end); chunk
// starts are multiples of ADAMW_CHUNK, so a chunk's pointers keep the tensor's alignment and it
// takes the same vector or scalar path, and each element gets the per-tensor kernels' exact
// arithmetic (and, stochastic rounding, the same random bits, drawn by its index in its
// tensor): bit-identical results. Mirrored by adamw.rs's `AdamWTensorEntry` and `AdamWChunk`.
#define ADAMW_CHUNK 65536ull

struct AdamWTensorEntry {
  unsigned long long param, master, grad, exp_avg, exp_avg_sq;  // device addresses
  unsigned long long n, key;  // key: stochastic rounding's, this step
};

struct AdamWChunk {
  unsigned long long tensor, start;
};

// HOT: adamw_multi_bf16 adamw_multi_f32 adamw_multi_bf16_sr
extern "C" __global__ void __launch_bounds__(256)
    adamw_multi_bf16(const AdamWTensorEntry* __restrict__ tensors,
                     const AdamWChunk* __restrict__ chunks, const float* __restrict__ clip,
                     AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  const AdamWChunk c = chunks[blockIdx.x];
  const AdamWTensorEntry t = tensors[c.tensor];
  const unsigned long long n = min(ADAMW_CHUNK, t.n - c.start);
  adamw_bf16_range(reinterpret_cast<float*>(t.master) + c.start,
                   reinterpret_cast<bf16*>(t.param) + c.start,
                   reinterpret_cast<const float*>(t.grad) + c.start,
                   reinterpret_cast<float*>(t.exp_avg) + c.start,
                   reinterpret_cast<float*>(t.exp_avg_sq) + c.start, n, clip[1], s, threadIdx.x,
                   blockDim.x);
}

extern "C" __global__ void __launch_bounds__(256)
    adamw_multi_f32(const AdamWTensorEntry* __restrict__ tensors,
                    const AdamWChunk* __restrict__ chunks, const float* __restrict__ clip,
                    AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  const AdamWChunk c = chunks[blockIdx.x];
  const AdamWTensorEntry t = tensors[c.tensor];
  const unsigned long long n = min(ADAMW_CHUNK, t.n - c.start);
  adamw_f32_range(reinterpret_cast<float*>(t.param) + c.start,
                  reinterpret_cast<const float*>(t.grad) + c.start,
                  reinterpret_cast<float*>(t.exp_avg) + c.start,
                  reinterpret_cast<float*>(t.exp_avg_sq) + c.start, n, clip[1], s, threadIdx.x,
                  blockDim.x);
}

extern "C" __global__ void __launch_bounds__(256)
    adamw_multi_bf16_sr(const AdamWTensorEntry* __restrict__ tensors,
                        const AdamWChunk* __restrict__ chunks, const float* __restrict__ clip,
                        AdamWScalars s) {
  if (!isfinite(clip[0])) return;
  const AdamWChunk c = chunks[blockIdx.x];
  const AdamWTensorEntry t = tensors[c.tensor];
  const unsigned long long n = min(ADAMW_CHUNK, t.n - c.start);
  adamw_bf16_sr_range(reinterpret_cast<bf16*>(t.param) + c.start,
                      reinterpret_cast<const float*>(t.grad) + c.start,
                      reinterpret_cast<bf16*>(t.exp_avg) + c.start,
                      reinterpret_cast<bf16*>(t.exp_avg_sq) + c.start, n, clip[1], s, t.key,
                      c.start, threadIdx.x, blockDim.x);
}

// Σ g² of every gradient of a step in one launch: block b sums chunk b (elements [start, start +
// ADAMW_CHUNK) of tensor chunks[b].tensor, whose address and length are tensors[2·i], [2·i + 1])
// into partial[b]; grad_norm_finalize then adds the partials in order. Deterministic: the chunks
// depend only on the tensors' lengths.
// HOT: grad_sumsq_multi
extern "C" __global__ void __launch_bounds__(256)
    grad_sumsq_multi(const unsigned long long* __restrict__ tensors,
                     const AdamWChunk* __restrict__ chunks, double* __restrict__ partial) {
  __shared__ double scratch[32];
  const AdamWChunk c = chunks[blockIdx.x];
  const float* g = reinterpret_cast<const float*>(tensors[2 * c.tensor]) + c.start;
  const unsigned long long n = min(ADAMW_CHUNK, tensors[2 * c.tensor + 1] - c.start);
  const double total = sumsq_range(g, n, threadIdx.x, blockDim.x, scratch);
  if (threadIdx.x == 0) partial[blockIdx.x] = total;
}
