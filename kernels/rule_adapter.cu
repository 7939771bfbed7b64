// The rule adapter (Hewitt et al. 2024, §5: a product of the base model and hand-written rules)
// as one pass over each row of logits z [rows, vocab], one block per row:
//   score_i = log_softmax(z)_i + bias_i + [i = eos]·eos_bias_r
//   token_r = argmax_i score_i         (the lowest index on ties, as backend::cpu::ops::argmax)
//   logprob_r = score_a − log Σ_i exp(score_i)    the chosen token's log-probability under the
//                                                 adapted (renormalised) distribution
//   base_logprob_r = log_softmax(z)_a             and under the base model
// Since log_softmax(z)_i = z_i − lse(z), score_i = y_i − lse(z) with y = z + bias (+ eos term):
// the argmax is that of y, lse(score) = lse(y) − lse(z) and logprob = y_a − lse(y). One pass keeps
// an online log-sum-exp of z, one of y and a running argmax of y.
// `bias` is [vocab] shared by all rows (bias_row_stride 0) or [rows, vocab] (stride vocab);
// eos_bias is per row. A row whose scores are all −inf or NaN gives token 0 and NaN log-probs.
#include "common.cuh"

struct Best {
  float y;  // the best score so far (without the −lse(z) shift)
  int i;    // its index; INT_MAX while none
  float z;  // its logit
};

__device__ __forceinline__ Best better(Best a, Best b) {
  return (b.y > a.y || (b.y == a.y && b.i < a.i)) ? b : a;
}

__device__ __forceinline__ Best warp_best(Best b) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const Best other = {__shfl_xor_sync(0xffffffffu, b.y, o), __shfl_xor_sync(0xffffffffu, b.i, o),
                        __shfl_xor_sync(0xffffffffu, b.z, o)};
    b = better(b, other);
  }
  return b;
}

template <typename T>
__device__ __forceinline__ void rule_adapter(const T* __restrict__ logits,
                                             const float* __restrict__ bias, int bias_row_stride,
                                             unsigned int eos_id,
                                             const float* __restrict__ eos_bias,
                                             unsigned int* __restrict__ token,
                                             float* __restrict__ logprob,
                                             float* __restrict__ base_logprob, int vocab) {
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[64];
  __shared__ Best s_best[32];
  const int row = blockIdx.x;
  const T* z = logits + (size_t)row * vocab;
  const float* b = bias + (size_t)row * bias_row_stride;
  const float eb = eos_bias[row];
  const int eos = (int)min(eos_id, (unsigned int)vocab);  // vocab: no EOS term
  Lse sz = lse_empty(), sy = lse_empty();
  Best best = {-INFINITY, INT_MAX, 0.0f};
  if (vocab % N == 0 && bias_row_stride % N == 0 && aligned16(logits) && aligned16(bias)) {
    // One 16-byte pack of logits (and its bias) at element index `at`.
    auto take = [&](const float (&v)[N], float (&y)[N], int at) {
      float vmax = -INFINITY, ymax = -INFINITY;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        y[k] = (v[k] + y[k]) + (at + k == eos ? eb : 0.0f);
        vmax = fmaxf(vmax, v[k]);
        ymax = fmaxf(ymax, y[k]);
        if (y[k] > best.y) best = {y[k], at + k, v[k]};  // increasing i: first max kept
      }
      lse_add(sz, v, vmax);
      lse_add(sy, y, ymax);
    };
    // U packs per thread are loaded before any is used, so each thread keeps U·16 bytes of
    // logits (and of bias) in flight: with one pack at a time a row of 32000 took ~31 dependent
    // DRAM round trips per thread (19-29 µs at [64, 32000] on an H100, 8-10% of copy
    // bandwidth); now 4. U·N = 32 elements per thread per round, the last round predicated;
    // each thread still visits its indices in increasing order, so the first maximum is kept.
    constexpr int U = 32 / N;
    const int packs = vocab / N, stride = blockDim.x;
    for (int j = threadIdx.x; j < packs; j += U * stride) {
      float v[U][N], y[U][N];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j + u * stride < packs) {
          load16(z + (j + u * stride) * N, v[u]);
          load_f32s(b + (j + u * stride) * N, y[u]);
        }
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (j + u * stride < packs) take(v[u], y[u], (j + u * stride) * N);
      }
    }
  } else {
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
      const float v[1] = {to_float(z[i])};
      const float y[1] = {(v[0] + b[i]) + (i == eos ? eb : 0.0f)};
      if (y[0] > best.y) best = {y[0], i, v[0]};
      lse_add(sz, v, v[0]);
      lse_add(sy, y, y[0]);
    }
  }
  const float lse_z = block_lse(sz, scratch);
  const float lse_y = block_lse(sy, scratch);
  best = warp_best(best);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) s_best[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = lane < warps ? s_best[lane] : Best{-INFINITY, INT_MAX, 0.0f};
    best = warp_best(best);
    if (lane == 0) {
      const bool found = best.i != INT_MAX;
      token[row] = found ? (unsigned int)best.i : 0u;
      logprob[row] = found ? best.y - lse_y : NAN;
      base_logprob[row] = found ? best.z - lse_z : NAN;
    }
  }
}

// HOT: rule_adapter_f32 rule_adapter_bf16
#define RULE_KERNEL(T, SUF)                                                                    \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS) rule_adapter_##SUF(                 \
      const T* logits, const float* bias, int bias_row_stride, unsigned int eos_id,             \
      const float* eos_bias, unsigned int* token, float* logprob, float* base_logprob,          \
      int vocab) {                                                                              \
    rule_adapter<T>(logits, bias, bias_row_stride, eos_id, eos_bias, token, logprob,           \
                    base_logprob, vocab);                                                       \
  }

RULE_KERNEL(float, f32)
RULE_KERNEL(bf16, bf16)
