// RMSNorm and parameter-free LayerNorm, forward and backward. One block per row (rows are
// `d` contiguous elements); 16-byte vector accesses when d and every pointer allow, else scalar.
// CPU references: backend::cpu::ops::{rms_norm, layer_norm_no_params} and
// backend::cpu::backward::{rms_norm_backward, layer_norm_backward}.
#include "common.cuh"

// RMSNorm (Zhang & Sennrich 2019): y = x · r · w, r = 1/sqrt(mean(x²) + eps).
template <typename T>
__device__ __forceinline__ void rmsnorm_fwd(const T* __restrict__ x, const T* __restrict__ w,
                                            T* __restrict__ y, int d, float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[32];
  const size_t base = (size_t)blockIdx.x * d;
  const T* xr = x + base;
  T* yr = y + base;
  const bool vec = d % N == 0 && aligned16(x) && aligned16(w) && aligned16(y);
  float ss = 0.0f;
  if (vec) {
    for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
      float v[N];
      load16(xr + j * N, v);
#pragma unroll
      for (int k = 0; k < N; ++k) ss += v[k] * v[k];
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float v = to_float(xr[i]);
      ss += v * v;
    }
  }
  ss = block_sum1(ss, scratch);
  const float r = 1.0f / sqrtf(ss / (float)d + eps);
  // Second pass: the row was just read by this block, so it comes from L1/L2, not DRAM.
  if (vec) {
    for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
      float v[N], g[N];
      load16(xr + j * N, v);
      load16(w + j * N, g);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = v[k] * r * g[k];
      store16(yr + j * N, v);
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x)
      yr[i] = from_float<T>(to_float(xr[i]) * r * to_float(w[i]));
  }
}

// Rows per tile of the RMSNorm backward: one row per warp in phase 1.
#define RMS_BWD_TILE 8

// RMSNorm backward, dx and per-block partial sums of dw:
//   dx = r·(w⊙dy) − r³/d · x · Σ(w⊙dy⊙x),   dw_partial[b] = Σ_{rows of block b} dy⊙x·r.
// Block b owns rows [b·rows_per_block, …) and the row dw_partial[b·d, …); each column of that
// row is owned by one thread, so the partial sums need no atomics and are deterministic.
template <typename T>
__device__ __forceinline__ void rmsnorm_bwd(const T* __restrict__ x, const T* __restrict__ w,
                                            const T* __restrict__ dy, T* __restrict__ dx,
                                            float* __restrict__ dw_partial, int rows, int d,
                                            int rows_per_block, float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float s_r[RMS_BWD_TILE], s_c[RMS_BWD_TILE];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const bool vec = d % N == 0 && aligned16(x) && aligned16(w) && aligned16(dy) &&
                   aligned16(dx) && aligned16(dw_partial);
  const int row0 = blockIdx.x * rows_per_block;
  const int row_end = min(rows, row0 + rows_per_block);
  float* part = dw_partial + (size_t)blockIdx.x * d;
  for (int tile = row0; tile < row_end; tile += RMS_BWD_TILE) {
    const int tile_rows = min(RMS_BWD_TILE, row_end - tile);
    // Phase 1: warp `warp` reduces row tile + warp: Σx² and Σ w·dy·x.
    for (int t = warp; t < tile_rows; t += blockDim.x >> 5) {
      const size_t off = (size_t)(tile + t) * d;
      float ss = 0.0f, dot = 0.0f;
      if (vec) {
        for (int j = lane; j < d / N; j += 32) {
          float xv[N], gv[N], wv[N];
          load16(x + off + j * N, xv);
          load16(dy + off + j * N, gv);
          load16(w + j * N, wv);
#pragma unroll
          for (int k = 0; k < N; ++k) {
            ss += xv[k] * xv[k];
            dot += wv[k] * gv[k] * xv[k];
          }
        }
      } else {
        for (int i = lane; i < d; i += 32) {
          const float xv = to_float(x[off + i]);
          ss += xv * xv;
          dot += to_float(w[i]) * to_float(dy[off + i]) * xv;
        }
      }
      ss = warp_sum(ss);
      dot = warp_sum(dot);
      if (lane == 0) {
        const float r = 1.0f / sqrtf(ss / (float)d + eps);
        s_r[t] = r;
        s_c[t] = r * r * r / (float)d * dot;
      }
    }
    __syncthreads();
    // Phase 2: columns across threads, the tile's rows inside (re-read from L1/L2).
    const bool first = tile == row0;
    if (vec) {
      for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
        float acc[N], wv[N];
        if (first) {
#pragma unroll
          for (int k = 0; k < N; ++k) acc[k] = 0.0f;
        } else {
          load_f32s(part + j * N, acc);
        }
        load16(w + j * N, wv);
        for (int t = 0; t < tile_rows; ++t) {
          const size_t off = (size_t)(tile + t) * d + j * N;
          const float r = s_r[t], c = s_c[t];
          float xv[N], gv[N], out[N];
          load16(x + off, xv);
          load16(dy + off, gv);
#pragma unroll
          for (int k = 0; k < N; ++k) {
            out[k] = r * wv[k] * gv[k] - c * xv[k];
            acc[k] += gv[k] * xv[k] * r;
          }
          store16(dx + off, out);
        }
        store_f32s(part + j * N, acc);
      }
    } else {
      for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float acc = first ? 0.0f : part[i];
        const float wv = to_float(w[i]);
        for (int t = 0; t < tile_rows; ++t) {
          const size_t off = (size_t)(tile + t) * d + i;
          const float xv = to_float(x[off]), gv = to_float(dy[off]);
          dx[off] = from_float<T>(s_r[t] * wv * gv - s_c[t] * xv);
          acc += gv * xv * s_r[t];
        }
        part[i] = acc;
      }
    }
    __syncthreads();  // s_r/s_c are rewritten by the next tile
  }
}

// LayerNorm without parameters (OLMo): y = (x − μ)·r, r = 1/sqrt(var + eps), biased variance.
// The sums are taken about the row's first element K (shifted data), so that a large mean does
// not cancel: var = (Σ(x−K)² − (Σ(x−K))²/d)/d, μ = K + Σ(x−K)/d.
template <typename T>
__device__ __forceinline__ void layernorm_fwd(const T* __restrict__ x, T* __restrict__ y, int d,
                                              float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[64];
  const size_t base = (size_t)blockIdx.x * d;
  const T* xr = x + base;
  T* yr = y + base;
  const bool vec = d % N == 0 && aligned16(x) && aligned16(y);
  const float shift = to_float(xr[0]);
  float s[2] = {0.0f, 0.0f};
  if (vec) {
    for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
      float v[N];
      load16(xr + j * N, v);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float c = v[k] - shift;
        s[0] += c;
        s[1] += c * c;
      }
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float c = to_float(xr[i]) - shift;
      s[0] += c;
      s[1] += c * c;
    }
  }
  block_sum<float, 2>(s, scratch);
  const float mean_c = s[0] / (float)d;  // mean − K
  const float var = fmaxf(s[1] / (float)d - mean_c * mean_c, 0.0f);
  const float r = 1.0f / sqrtf(var + eps);
  const float mean = shift + mean_c;
  if (vec) {
    for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
      float v[N];
      load16(xr + j * N, v);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = (v[k] - mean) * r;
      store16(yr + j * N, v);
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x)
      yr[i] = from_float<T>((to_float(xr[i]) - mean) * r);
  }
}

// Parameter-free LayerNorm backward, x̂ = (x − μ)·r:
//   dx = r·(dy − mean(dy) − x̂·mean(dy⊙x̂)),  with Σ dy⊙x̂ = r·(Σ dy⊙(x−K) − (μ−K)·Σ dy),
// so one pass gathers all four sums and a second writes dx.
template <typename T>
__device__ __forceinline__ void layernorm_bwd(const T* __restrict__ x, const T* __restrict__ dy,
                                              T* __restrict__ dx, int d, float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[128];
  const size_t base = (size_t)blockIdx.x * d;
  const T* xr = x + base;
  const T* gr = dy + base;
  T* outr = dx + base;
  const bool vec = d % N == 0 && aligned16(x) && aligned16(dy) && aligned16(dx);
  const float shift = to_float(xr[0]);
  // s = {Σ(x−K), Σ(x−K)², Σdy, Σdy·(x−K)}
  float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (vec) {
    for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
      float v[N], g[N];
      load16(xr + j * N, v);
      load16(gr + j * N, g);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const float c = v[k] - shift;
        s[0] += c;
        s[1] += c * c;
        s[2] += g[k];
        s[3] += g[k] * c;
      }
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float c = to_float(xr[i]) - shift, g = to_float(gr[i]);
      s[0] += c;
      s[1] += c * c;
      s[2] += g;
      s[3] += g * c;
    }
  }
  block_sum<float, 4>(s, scratch);
  const float inv_d = 1.0f / (float)d;
  const float mean_c = s[0] * inv_d;
  const float var = fmaxf(s[1] * inv_d - mean_c * mean_c, 0.0f);
  const float r = 1.0f / sqrtf(var + eps);
  const float mean = shift + mean_c;
  const float mean_dy = s[2] * inv_d;
  const float mean_dy_xhat = r * (s[3] - mean_c * s[2]) * inv_d;
  if (vec) {
    for (int j = threadIdx.x; j < d / N; j += blockDim.x) {
      float v[N], g[N];
      load16(xr + j * N, v);
      load16(gr + j * N, g);
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] = r * (g[k] - mean_dy - (v[k] - mean) * r * mean_dy_xhat);
      store16(outr + j * N, v);
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float xhat = (to_float(xr[i]) - mean) * r;
      outr[i] = from_float<T>(r * (to_float(gr[i]) - mean_dy - xhat * mean_dy_xhat));
    }
  }
}

// dw[i] = (accumulate ? dw[i] : 0) + Σ_b dw_partial[b·d + i], summed in a fixed order: a block of
// 32 columns × 8 row groups; group g sums partials g, g+8, …; then the 8 groups are added in order.
// HOT: rmsnorm_dw_reduce
extern "C" __global__ void __launch_bounds__(256)
    rmsnorm_dw_reduce(const float* __restrict__ dw_partial, float* __restrict__ dw, int blocks,
                      int d, int accumulate) {
  __shared__ float s[8][33];
  const int col = blockIdx.x * 32 + (threadIdx.x & 31);
  const int group = threadIdx.x >> 5;
  float acc = 0.0f;
  if (col < d) {
    for (int b = group; b < blocks; b += 8) acc += dw_partial[(size_t)b * d + col];
  }
  s[group][threadIdx.x & 31] = acc;
  __syncthreads();
  if (group == 0 && col < d) {
    float total = accumulate ? dw[col] : 0.0f;
    float sum = 0.0f;
#pragma unroll
    for (int g = 0; g < 8; ++g) sum += s[g][threadIdx.x];
    dw[col] = total + sum;
  }
}

// HOT: rmsnorm_fwd_f32 rmsnorm_fwd_bf16 rmsnorm_bwd_f32 rmsnorm_bwd_bf16 layernorm_fwd_f32
// HOT: layernorm_fwd_bf16 layernorm_bwd_f32 layernorm_bwd_bf16
#define NORM_KERNELS(T, SUF)                                                                    \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      rmsnorm_fwd_##SUF(const T* x, const T* w, T* y, int d, float eps) {                        \
    rmsnorm_fwd<T>(x, w, y, d, eps);                                                             \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      rmsnorm_bwd_##SUF(const T* x, const T* w, const T* dy, T* dx, float* dw_partial, int rows, \
                        int d, int rows_per_block, float eps) {                                  \
    rmsnorm_bwd<T>(x, w, dy, dx, dw_partial, rows, d, rows_per_block, eps);                      \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      layernorm_fwd_##SUF(const T* x, T* y, int d, float eps) {                                  \
    layernorm_fwd<T>(x, y, d, eps);                                                              \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      layernorm_bwd_##SUF(const T* x, const T* dy, T* dx, int d, float eps) {                    \
    layernorm_bwd<T>(x, dy, dx, d, eps);                                                         \
  }

NORM_KERNELS(float, f32)
NORM_KERNELS(bf16, bf16)
