// Parameter-free LayerNorm (OLMo), forward and backward. One block per row (rows are `d`
// contiguous elements), except the backward that holds rows in registers
// (`layernorm_bwd_regs_*`, d ≤ 8192), whose blocks take several rows; 16-byte vector accesses
// when d and every pointer allow, else scalar. The helpers it shares with the RMSNorm backward
// (norm.cu) are in norm_rows.cuh.
// CPU references: backend::cpu::ops::layer_norm_no_params and
// backend::cpu::backward::layer_norm_backward.
#include "norm_rows.cuh"

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
                                              T* __restrict__ dx, bf16* __restrict__ dx_bf16,
                                              int dx_accumulate, int d, float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float scratch[128];
  const size_t base = (size_t)blockIdx.x * d;
  const T* xr = x + base;
  const T* gr = dy + base;
  const bool vec = d % N == 0 && aligned16(x) && aligned16(dy) && aligned16(dx) &&
                   (reinterpret_cast<uintptr_t>(dx_bf16) & (2 * N - 1)) == 0;
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
      store_dx<T, N>(dx, dx_bf16, dx_accumulate, base + j * N, N, true, v);
    }
  } else {
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
      const float xhat = (to_float(xr[i]) - mean) * r;
      float v[1] = {r * (to_float(gr[i]) - mean_dy - xhat * mean_dy_xhat)};
      store_dx<T, 1>(dx, dx_bf16, dx_accumulate, base + i, 1, false, v);
    }
  }
}

// Parameter-free LayerNorm backward with the rows in registers (d ≤ VPT·N·ROW_THREADS), the
// scheme of rmsnorm_bwd_regs (norm.cu): thread t owns the columns of vectors t, t + 256, … of
// each row, so x and dy are read from DRAM once (layernorm_bwd re-reads them for dx) and dx is
// written once.
// Block b takes rows b·R … b·R + R − 1, all loaded before any is summed (2·R·VPT 16-byte loads
// in flight per thread); their four sums each go through one barrier. Same formula and shift K
// (the row's first element, which every thread loads too) as layernorm_bwd; every sum runs in a
// fixed order, so dx is the same on every run. No weight, so no partial sums across rows.
//
// VEC (16-byte accesses) is a separate instantiation with no branch around any load
// (load_cols_unbranched): a dead row re-reads row b·R and a column past d column 0, discarded.
template <typename T, int VPT, int R, bool VEC>
__device__ __forceinline__ void layernorm_bwd_rows(const T* __restrict__ x,
                                                   const T* __restrict__ dy, T* __restrict__ dx,
                                                   bf16* __restrict__ dx_bf16, int dx_accumulate,
                                                   int rows, int d, float eps,
                                                   float (*s_sums)[ROW_THREADS / 32]) {
  constexpr int N = Pack<T>::N;
  constexpr int WARPS = ROW_THREADS / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * R;
  float xv[R][VPT][N], gv[R][VPT][N], shift[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const bool live = row0 + r < rows;
    const size_t off = (size_t)(live ? row0 + r : row0) * d;
    shift[r] = to_float(x[off]);
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int col = (threadIdx.x + i * ROW_THREADS) * N;
      load_cols_unbranched<T, N, VEC>(x + off, col, d, xv[r][i]);
      load_cols_unbranched<T, N, VEC>(dy + off, col, d, gv[r][i]);
    }
  }
  // s = {Σ(x−K), Σ(x−K)², Σdy, Σdy·(x−K)} per row; columns past d count for nothing.
#pragma unroll
  for (int r = 0; r < R; ++r) {
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int col = (threadIdx.x + i * ROW_THREADS) * N;
#pragma unroll
      for (int k = 0; k < N; ++k) {
        const bool valid = col + k < d;
        const float c = valid ? xv[r][i][k] - shift[r] : 0.0f;
        const float g = valid ? gv[r][i][k] : 0.0f;
        s[0] += c;
        s[1] += c * c;
        s[2] += g;
        s[3] += g * c;
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      s[q] = warp_sum(s[q]);
      if (lane == 0) s_sums[4 * r + q][warp] = s[q];
    }
  }
  __syncthreads();
  const float inv_d = 1.0f / (float)d;
#pragma unroll
  for (int r = 0; r < R; ++r) {
    if (row0 + r >= rows) break;
    float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int w = 0; w < WARPS; ++w) {
#pragma unroll
      for (int q = 0; q < 4; ++q) s[q] += s_sums[4 * r + q][w];
    }
    const float mean_c = s[0] * inv_d;
    const float var = fmaxf(s[1] * inv_d - mean_c * mean_c, 0.0f);
    const float rr = 1.0f / sqrtf(var + eps);
    const float mean = shift[r] + mean_c;
    const float mean_dy = s[2] * inv_d;
    const float mean_dy_xhat = rr * (s[3] - mean_c * s[2]) * inv_d;
    const size_t off = (size_t)(row0 + r) * d;
    float out[VPT][N];
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
#pragma unroll
      for (int k = 0; k < N; ++k)
        out[i][k] = rr * (gv[r][i][k] - mean_dy - (xv[r][i][k] - mean) * rr * mean_dy_xhat);
    }
    if constexpr (VEC) {
      // The residual's old dx: the row's VPT loads issued together, not one per store.
      if (dx_accumulate) {
        float old[VPT][N];
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
          load_cols_unbranched<T, N, true>(dx + off, (threadIdx.x + i * ROW_THREADS) * N, d,
                                           old[i]);
        }
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
#pragma unroll
          for (int k = 0; k < N; ++k) out[i][k] += old[i][k];
        }
      }
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        const int col = (threadIdx.x + i * ROW_THREADS) * N;
        if (col < d) store_dx_vec<T, N>(dx, dx_bf16, 0, off + col, out[i]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        const int col = (threadIdx.x + i * ROW_THREADS) * N;
        if (col < d)
          store_dx<T, N>(dx, dx_bf16, dx_accumulate, off + col, min(N, d - col), false, out[i]);
      }
    }
  }
}

template <typename T, int VPT, int R>
__device__ __forceinline__ void layernorm_bwd_regs(const T* __restrict__ x,
                                                   const T* __restrict__ dy, T* __restrict__ dx,
                                                   bf16* __restrict__ dx_bf16, int dx_accumulate,
                                                   int rows, int d, float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float s_sums[4 * R][ROW_THREADS / 32];
  const bool vec = d % N == 0 && aligned16(x) && aligned16(dy) && aligned16(dx) &&
                   (reinterpret_cast<uintptr_t>(dx_bf16) & (2 * N - 1)) == 0;
  if (vec) {
    layernorm_bwd_rows<T, VPT, R, true>(x, dy, dx, dx_bf16, dx_accumulate, rows, d, eps, s_sums);
  } else {
    layernorm_bwd_rows<T, VPT, R, false>(x, dy, dx, dx_bf16, dx_accumulate, rows, d, eps, s_sums);
  }
}
// HOT: layernorm_fwd_f32 layernorm_fwd_bf16 layernorm_bwd_f32 layernorm_bwd_bf16
#define LAYERNORM_KERNELS(T, SUF)                                                               \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      layernorm_fwd_##SUF(const T* x, T* y, int d, float eps) {                                  \
    layernorm_fwd<T>(x, y, d, eps);                                                              \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      layernorm_bwd_##SUF(const T* x, const T* dy, T* dx, bf16* dx_bf16, int dx_accumulate,     \
                          int d, float eps) {                                                    \
    layernorm_bwd<T>(x, dy, dx, dx_bf16, dx_accumulate, d, eps);                                 \
  }

LAYERNORM_KERNELS(float, f32)
LAYERNORM_KERNELS(bf16, bf16)

// The row-in-registers LayerNorm backward, one kernel per VPT as for RMSNorm; R rows a block
// (about 32 loaded values per tensor and thread, fewer registers than RMSNorm's, which also
// holds w and its dw share).
// HOT: layernorm_bwd_regs_f32_v1 layernorm_bwd_regs_f32_v2 layernorm_bwd_regs_f32_v4
// HOT: layernorm_bwd_regs_f32_v8 layernorm_bwd_regs_bf16_v1 layernorm_bwd_regs_bf16_v2
// HOT: layernorm_bwd_regs_bf16_v4
#define LN_BWD_REGS_KERNEL(T, SUF, VPT, R, MIN_BLOCKS)                                           \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS, MIN_BLOCKS)                          \
      layernorm_bwd_regs_##SUF##_v##VPT(const T* x, const T* dy, T* dx, bf16* dx_bf16,           \
                                        int dx_accumulate, int rows, int d, float eps) {         \
    layernorm_bwd_regs<T, VPT, R>(x, dy, dx, dx_bf16, dx_accumulate, rows, d, eps);             \
  }

LN_BWD_REGS_KERNEL(float, f32, 1, 4, 2)
LN_BWD_REGS_KERNEL(float, f32, 2, 4, 2)
LN_BWD_REGS_KERNEL(float, f32, 4, 2, 2)
LN_BWD_REGS_KERNEL(float, f32, 8, 1, 2)
LN_BWD_REGS_KERNEL(bf16, bf16, 1, 4, 2)
LN_BWD_REGS_KERNEL(bf16, bf16, 2, 2, 2)
LN_BWD_REGS_KERNEL(bf16, bf16, 4, 1, 2)
