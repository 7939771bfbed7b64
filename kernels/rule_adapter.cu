// The rule adapter (Hewitt et al. 2024, §5: a product of the base model and hand-written rules)
// over each row of logits z [rows, vocab]:
//   score_i = log_softmax(z)_i + bias_i + [i = eos]·eos_bias_r
//   token_r = argmax_i score_i         (the lowest index on ties, as backend::cpu::ops::argmax)
//   logprob_r = score_a − log Σ_i exp(score_i)    the chosen token's log-probability under the
//                                                 adapted (renormalised) distribution
//   base_logprob_r = log_softmax(z)_a             and under the base model
// Since log_softmax(z)_i = z_i − lse(z), score_i = y_i − lse(z) with y = z + bias (+ eos term):
// the argmax is that of y, lse(score) = lse(y) − lse(z) and logprob = y_a − lse(y). One pass keeps
// an online log-sum-exp of z, one of y and a running argmax of y: three reductions, nothing
// written per element.
// `bias` is [vocab] shared by all rows (bias_row_stride 0) or [rows, vocab] (stride vocab);
// eos_bias is per row. A row whose scores are all −inf or NaN gives token 0 and NaN log-probs.
//
// Two kernels (src/backend/cuda/rule_adapter.rs picks one):
// - rule_adapter_{f32,bf16}: one block per row. At decode sizes (rows ≤ 256 on 132 SMs) most
//   SMs idle: 19-29 µs at [64, 32000] on an H100, 8-10% of copy bandwidth.
// - rule_adapter_split_{f32,bf16}: each row split into `chunks` chunks of `chunk_len` logits,
//   one block each (the grid fills the GPU at batch 1). Each block reduces its chunk to a record
//   (the two log-sum-exp states and its best candidate), writes it to `records`, counts itself in
//   its row's counter; the last block of the row to arrive combines the row's records in chunk
//   order (so the bits do not depend on the arrival order), writes the outputs and resets the
//   counter to 0 for the next launch (a CUDA graph replays it without a memset). One kernel
//   rather than a record pass and a combine pass: the second launch would cost about as much as
//   the bytes at [64, 32000] (~2.7 µs), and the logits are read once either way.
#include <limits.h>

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

__device__ __forceinline__ Best best_empty() { return {-INFINITY, INT_MAX, 0.0f}; }

// What a thread, a block or a chunk knows about its logits.
struct Partial {
  Lse z, y;
  Best best;
};

// e^x as ex2.approx.ftz(x·log2 e): 2 instructions against expf's ~9 (its range reduction) or
// __expf's ~5 (its subnormal fix-up). The error is __expf's, 2 + ⌊1.173·|x|⌋ ulp (CUDA C++
// Programming Guide, intrinsic functions), where the second term is the rounding of x·log2 e;
// results below 2^−126 flush to 0.
__device__ __forceinline__ float exp_approx(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x * 1.4426950408889634f));
  return y;
}

// common.cuh's lse_add, with FAST_EXP taking exp_approx for the per-element exponentials. Here
// x = v − m ≤ 0, and the terms the sum is made of (x within a few units of 0) are within 2-6 ulp
// (< 4e-7); the rest each weigh below e^−3 of the largest and err by at most 1.2e-7·|x| more;
// the flushed ones are below 2^−126 of it. The rescaling of the sum (once per pack) keeps expf.
template <bool FAST_EXP, int N>
__device__ __forceinline__ void lse_add_pack(Lse& st, const float (&v)[N], float vmax) {
  if (!FAST_EXP) {
    lse_add(st, v, vmax);
    return;
  }
  const float m = fmaxf(st.m, vmax);
  if (m == -INFINITY) {
    bool nan = false;  // as in lse_add: NaN, once seen, stays in the state
#pragma unroll
    for (int k = 0; k < N; ++k) nan |= isnan(v[k]);
    if (nan) st = {0.0f, NAN};
    return;
  }
  if (m > st.m) {
    st.s *= expf(st.m - m);
    st.m = m;
  }
#pragma unroll
  for (int k = 0; k < N; ++k) st.s += exp_approx(v[k] - m);
}

// One thread's share of the logits [begin, end) of a row: indices begin + threadIdx.x,
// + blockDim.x, … in increasing order (so the first maximum is kept). `begin` is a multiple of 8
// (16 bytes of f32 or bf16), so the packs stay 16-byte aligned when the row does.
template <typename T, bool FAST_EXP>
__device__ __forceinline__ Partial scan(const T* __restrict__ z, const float* __restrict__ b,
                                        float eb, int eos, int begin, int end, bool packed) {
  constexpr int N = Pack<T>::N;
  Partial p = {lse_empty(), lse_empty(), best_empty()};
  if (packed) {
    // One 16-byte pack of logits (and its bias) at element index `at`.
    // The EOS term and a new best are rare (one pack of the row; O(log n) packs of a thread's
    // in expectation), so each costs a test per pack, not per element. The values are those of
    // a per-element test: y + 0 = y, and a pack whose maximum does not beat the best has no
    // element that would.
    auto take = [&](const float (&v)[N], float (&y)[N], int at) {
      float vmax = -INFINITY, ymax = -INFINITY;
#pragma unroll
      for (int k = 0; k < N; ++k) y[k] = v[k] + y[k];
      if ((unsigned int)(eos - at) < (unsigned int)N) {
#pragma unroll
        for (int k = 0; k < N; ++k) y[k] += at + k == eos ? eb : 0.0f;
      }
#pragma unroll
      for (int k = 0; k < N; ++k) {
        vmax = fmaxf(vmax, v[k]);
        ymax = fmaxf(ymax, y[k]);
      }
      if (ymax > p.best.y) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          if (y[k] > p.best.y) p.best = {y[k], at + k, v[k]};  // increasing i: first max kept
        }
      }
      lse_add_pack<FAST_EXP>(p.z, v, vmax);
      lse_add_pack<FAST_EXP>(p.y, y, ymax);
    };
    // U packs per thread are loaded before any is used, so each thread keeps U·16 bytes of
    // logits (and of bias) in flight: with one pack at a time a row of 32000 took ~31 dependent
    // DRAM round trips per thread. U·N = 32 elements per thread per round, the last round
    // predicated; each thread still visits its indices in increasing order.
    constexpr int U = 32 / N;
    const int first = begin / N, packs = end / N, stride = blockDim.x;
    for (int j = first + threadIdx.x; j < packs; j += U * stride) {
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
    for (int i = begin + threadIdx.x; i < end; i += blockDim.x) {
      const float v[1] = {to_float(z[i])};
      const float y[1] = {(v[0] + b[i]) + (i == eos ? eb : 0.0f)};
      if (y[0] > p.best.y) p.best = {y[0], i, v[0]};
      lse_add_pack<FAST_EXP>(p.z, v, v[0]);
      lse_add_pack<FAST_EXP>(p.y, y, y[0]);
    }
  }
  return p;
}

// Whether the 16-byte path may read this row: whole packs per row and 16-byte aligned bases.
template <typename T>
__device__ __forceinline__ bool packed_rows(const T* logits, const float* bias, int vocab,
                                            int bias_row_stride) {
  constexpr int N = Pack<T>::N;
  return vocab % N == 0 && bias_row_stride % N == 0 && aligned16(logits) && aligned16(bias);
}

__device__ __forceinline__ void write_pick(const Best& best, float lse_y, float lse_z,
                                           unsigned int* token, float* logprob,
                                           float* base_logprob, int row) {
  const bool found = best.i != INT_MAX;
  token[row] = found ? (unsigned int)best.i : 0u;
  logprob[row] = found ? best.y - lse_y : NAN;
  base_logprob[row] = found ? best.z - lse_z : NAN;
}

template <typename T>
__device__ __forceinline__ void rule_adapter(const T* __restrict__ logits,
                                             const float* __restrict__ bias, int bias_row_stride,
                                             unsigned int eos_id,
                                             const float* __restrict__ eos_bias,
                                             unsigned int* __restrict__ token,
                                             float* __restrict__ logprob,
                                             float* __restrict__ base_logprob, int vocab) {
  __shared__ float scratch[64];
  __shared__ Best s_best[32];
  const int row = blockIdx.x;
  const T* z = logits + (size_t)row * vocab;
  const float* b = bias + (size_t)row * bias_row_stride;
  const int eos = (int)min(eos_id, (unsigned int)vocab);  // vocab: no EOS term
  // expf, as before the split kernel: this kernel's results are the reference the split's are
  // compared with.
  const Partial p = scan<T, false>(z, b, eos_bias[row], eos, 0, vocab,
                         packed_rows(logits, bias, vocab, bias_row_stride));
  const float lse_z = block_lse(p.z, scratch);
  const float lse_y = block_lse(p.y, scratch);
  Best best = warp_best(p.best);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) s_best[warp] = best;
  __syncthreads();
  if (warp == 0) {
    best = lane < warps ? s_best[lane] : best_empty();
    best = warp_best(best);
    if (lane == 0) write_pick(best, lse_y, lse_z, token, logprob, base_logprob, row);
  }
}

__device__ __forceinline__ Partial partial_combine(const Partial& a, const Partial& b) {
  return {lse_combine(a.z, b.z), lse_combine(a.y, b.y), better(a.best, b.best)};
}

// The combine over a warp by a fixed butterfly: the same bits for the same inputs.
__device__ __forceinline__ Partial warp_partial(Partial p) {
  p.z = warp_lse(p.z);
  p.y = warp_lse(p.y);
  p.best = warp_best(p.best);
  return p;
}

// A chunk's record in the workspace: 8 words, two 16-byte stores.
constexpr int RECORD_WORDS = 8;

__device__ __forceinline__ void store_record(float* r, const Partial& p) {
  reinterpret_cast<float4*>(r)[0] = make_float4(p.z.m, p.z.s, p.y.m, p.y.s);
  reinterpret_cast<float4*>(r)[1] = make_float4(p.best.y, __int_as_float(p.best.i), p.best.z, 0.0f);
}

// Read through L2 (ld.global.cg): the record was written by another SM, whose L1 is not ours.
__device__ __forceinline__ Partial load_record(const float* r) {
  const float4 a = __ldcg(reinterpret_cast<const float4*>(r));
  const float4 c = __ldcg(reinterpret_cast<const float4*>(r) + 1);
  return {{a.x, a.y}, {a.z, a.w}, {c.x, __float_as_int(c.y), c.z}};
}

// Block (row · chunks + chunk) reads logits [chunk · chunk_len, min(+chunk_len, vocab)) of its
// row; chunk_len is a multiple of 8. records: rows·chunks·8 floats; counters: rows words, zero.
template <typename T>
__device__ __forceinline__ void rule_adapter_split(
    const T* __restrict__ logits, const float* __restrict__ bias, int bias_row_stride,
    unsigned int eos_id, const float* __restrict__ eos_bias, unsigned int* __restrict__ token,
    float* __restrict__ logprob, float* __restrict__ base_logprob, int vocab, int chunks,
    int chunk_len, float* __restrict__ records, unsigned int* __restrict__ counters) {
  __shared__ Partial s_warp[32];
  const int row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
  const T* z = logits + (size_t)row * vocab;
  const float* b = bias + (size_t)row * bias_row_stride;
  const int eos = (int)min(eos_id, (unsigned int)vocab);  // vocab: no EOS term
  const int begin = chunk * chunk_len, end = min(begin + chunk_len, vocab);
  Partial p = scan<T, true>(z, b, eos_bias[row], eos, begin, end,
                   packed_rows(logits, bias, vocab, bias_row_stride));
  // The block's record: each warp's, then warp 0 combines them (one barrier).
  p = warp_partial(p);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) s_warp[warp] = p;
  __syncthreads();
  if (warp != 0) return;
  p = lane < warps ? s_warp[lane] : Partial{lse_empty(), lse_empty(), best_empty()};
  p = warp_partial(p);
  unsigned int arrived = 0;
  if (lane == 0) {
    store_record(records + ((size_t)row * chunks + chunk) * RECORD_WORDS, p);
    __threadfence();  // the record is visible GPU-wide before the count says so
    arrived = atomicAdd(counters + row, 1u);
  }
  if (__shfl_sync(0xffffffffu, arrived, 0) != (unsigned int)(chunks - 1)) return;
  __threadfence();  // the other chunks' records, counted before, are read after
  // The last block: lane l combines chunks l, l + 32, … in increasing order, then the
  // butterfly; log-sum-exp states combine as lse(a ∪ b) = m + log(s_a·e^(m_a−m) + s_b·e^(m_b−m)),
  // m = max(m_a, m_b) (the merge of two (m, d) states in Milakov & Gimelshein 2018, "Online
  // normalizer calculation for softmax"), exactly as a block combines its threads' states.
  Partial all = {lse_empty(), lse_empty(), best_empty()};
  const float* row_records = records + (size_t)row * chunks * RECORD_WORDS;
  for (int c = lane; c < chunks; c += 32)
    all = partial_combine(all, load_record(row_records + (size_t)c * RECORD_WORDS));
  all = warp_partial(all);
  if (lane == 0) {
    write_pick(all.best, all.y.m + logf(all.y.s), all.z.m + logf(all.z.s), token, logprob,
               base_logprob, row);
    counters[row] = 0;  // ready for the next launch (kernel order on the stream)
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

// Two blocks per SM (the planner's resident count, rule_adapter.rs's BLOCKS_PER_SM).
// HOT: rule_adapter_split_f32 rule_adapter_split_bf16
#define RULE_SPLIT_KERNEL(T, SUF)                                                               \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS, 2) rule_adapter_split_##SUF(        \
      const T* logits, const float* bias, int bias_row_stride, unsigned int eos_id,             \
      const float* eos_bias, unsigned int* token, float* logprob, float* base_logprob,          \
      int vocab, int chunks, int chunk_len, float* records, unsigned int* counters) {           \
    rule_adapter_split<T>(logits, bias, bias_row_stride, eos_id, eos_bias, token, logprob,     \
                          base_logprob, vocab, chunks, chunk_len, records, counters);           \
  }

RULE_SPLIT_KERNEL(float, f32)
RULE_SPLIT_KERNEL(bf16, bf16)
