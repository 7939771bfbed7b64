// RMSNorm and parameter-free LayerNorm, forward and backward. One block per row (rows are
// `d` contiguous elements), except the backwards that hold rows in registers (`*_bwd_regs_*`,
// d ≤ 8192), whose blocks take several rows; 16-byte vector accesses when d and every pointer
// allow, else scalar.
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

// RMSNorm backward with the rows in registers (d ≤ VPT·N·ROW_THREADS): thread t owns the
// columns of vectors t, t + 256, … of every row, so x and dy are read from DRAM exactly once,
// dx is written once, and the thread's share of dw stays in registers across the block's rows.
// R rows are loaded together (R·VPT 16-byte loads in flight per tensor and thread) and their
// two sums each, Σx² and Σ w·dy·x, reduced through one barrier on a double-buffered scratch.
// Block b owns rows [b·rows_per_block, …) and writes dw_partial[b·d, …) once, with no atomics;
// every sum runs in a fixed order, so dx and dw are the same on every run.
//
// VEC is the unbranched 16-byte instantiation (load_cols_unbranched): a dead row re-reads row
// `row`, and the vectors past d are zeroed after loading, so every sum adds exactly the values
// the scalar path adds (zeros past d), in the same order.
template <typename T, int VPT, int R, bool VEC>
__device__ __forceinline__ void rmsnorm_bwd_rows(const T* __restrict__ x, const T* __restrict__ w,
                                                 const T* __restrict__ dy, T* __restrict__ dx,
                                                 bf16* __restrict__ dx_bf16, int dx_accumulate,
                                                 float* __restrict__ dw_partial, int rows, int d,
                                                 int rows_per_block, float eps, float inv_d,
                                                 float (*s_sums)[2 * R][ROW_THREADS / 32]) {
  constexpr int N = Pack<T>::N;
  constexpr int WARPS = ROW_THREADS / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = blockIdx.x * rows_per_block;
  const int row_end = min(rows, row0 + rows_per_block);
  float wv[VPT][N], acc[VPT][N];
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int col = (threadIdx.x + i * ROW_THREADS) * N;
    load_cols_unbranched<T, N, VEC>(w, col, d, wv[i]);
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if constexpr (VEC) wv[i][k] = col < d ? wv[i][k] : 0.0f;
      acc[i][k] = 0.0f;
    }
  }
  int parity = 0;
  for (int row = row0; row < row_end; row += R, parity ^= 1) {
    float xv[R][VPT][N], gv[R][VPT][N];
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const bool live = row + r < row_end;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
        const int col = (threadIdx.x + i * ROW_THREADS) * N;
        if constexpr (VEC) {
          const size_t off = (size_t)(live ? row + r : row) * d;
          load_cols_unbranched<T, N, true>(x + off, col, d, xv[r][i]);
          load_cols_unbranched<T, N, true>(dy + off, col, d, gv[r][i]);
        } else {
          const size_t off = (size_t)(row + r) * d;
          load_cols(x + off, live ? col : d, d, false, xv[r][i]);
          load_cols(dy + off, live ? col : d, d, false, gv[r][i]);
        }
      }
    }
    if constexpr (VEC) {
      // After all the loads: the vectors past d count for nothing, as in the scalar path.
#pragma unroll
      for (int r = 0; r < R; ++r) {
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
          const bool valid = (threadIdx.x + i * ROW_THREADS) * N < d;
#pragma unroll
          for (int k = 0; k < N; ++k) {
            xv[r][i][k] = valid ? xv[r][i][k] : 0.0f;
            gv[r][i][k] = valid ? gv[r][i][k] : 0.0f;
          }
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float ss = 0.0f, dot = 0.0f;
#pragma unroll
      for (int i = 0; i < VPT; ++i) {
#pragma unroll
        for (int k = 0; k < N; ++k) {
          ss += xv[r][i][k] * xv[r][i][k];
          dot += wv[i][k] * gv[r][i][k] * xv[r][i][k];
        }
      }
      ss = warp_sum(ss);
      dot = warp_sum(dot);
      if (lane == 0) {
        s_sums[parity][2 * r][warp] = ss;
        s_sums[parity][2 * r + 1][warp] = dot;
      }
    }
    // One barrier per R rows: the other buffer is rewritten only after the next barrier, which
    // every warp reaches after reading this one.
    __syncthreads();
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (row + r >= row_end) break;
      float ss = 0.0f, dot = 0.0f;
#pragma unroll
      for (int q = 0; q < WARPS; ++q) {
        ss += s_sums[parity][2 * r][q];
        dot += s_sums[parity][2 * r + 1][q];
      }
      const float rr = 1.0f / sqrtf(ss * inv_d + eps);
      const float c = rr * rr * rr * inv_d * dot;
      const size_t off = (size_t)(row + r) * d;
      if constexpr (VEC) {
        float out[VPT][N];
#pragma unroll
        for (int i = 0; i < VPT; ++i) {
          const bool valid = (threadIdx.x + i * ROW_THREADS) * N < d;
#pragma unroll
          for (int k = 0; k < N; ++k) {
            out[i][k] = rr * wv[i][k] * gv[r][i][k] - c * xv[r][i][k];
            if (valid) acc[i][k] += gv[r][i][k] * xv[r][i][k] * rr;
          }
        }
        // The residual's old dx: the row's VPT loads issued together, not one per store.
        if (dx_accumulate) {
          float old[VPT][N];
#pragma unroll
          for (int i = 0; i < VPT; ++i)
            load_cols_unbranched<T, N, true>(dx + off, (threadIdx.x + i * ROW_THREADS) * N, d,
                                             old[i]);
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
          if (col >= d) continue;
          float out[N];
#pragma unroll
          for (int k = 0; k < N; ++k) {
            out[k] = rr * wv[i][k] * gv[r][i][k] - c * xv[r][i][k];
            acc[i][k] += gv[r][i][k] * xv[r][i][k] * rr;
          }
          store_dx<T, N>(dx, dx_bf16, dx_accumulate, off + col, min(N, d - col), false, out);
        }
      }
    }
  }
  float* part = dw_partial + (size_t)blockIdx.x * d;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int col = (threadIdx.x + i * ROW_THREADS) * N;
    if (col >= d) continue;
    if constexpr (VEC) {
      store_f32s(part + col, acc[i]);
    } else {
      for (int k = 0; k < N && col + k < d; ++k) part[col + k] = acc[i][k];
    }
  }
}

template <typename T, int VPT, int R>
__device__ __forceinline__ void rmsnorm_bwd_regs(const T* __restrict__ x, const T* __restrict__ w,
                                                 const T* __restrict__ dy, T* __restrict__ dx,
                                                 bf16* __restrict__ dx_bf16, int dx_accumulate,
                                                 float* __restrict__ dw_partial, int rows, int d,
                                                 int rows_per_block, float eps) {
  constexpr int N = Pack<T>::N;
  __shared__ float s_sums[2][2 * R][ROW_THREADS / 32];
  const float inv_d = 1.0f / (float)d;  // once, not in each instantiation
  const bool vec = d % N == 0 && aligned16(x) && aligned16(w) && aligned16(dy) && aligned16(dx) &&
                   aligned16(dw_partial) &&
                   (reinterpret_cast<uintptr_t>(dx_bf16) & (2 * N - 1)) == 0;
  if (vec) {
    rmsnorm_bwd_rows<T, VPT, R, true>(x, w, dy, dx, dx_bf16, dx_accumulate, dw_partial, rows, d,
                                      rows_per_block, eps, inv_d, s_sums);
  } else {
    rmsnorm_bwd_rows<T, VPT, R, false>(x, w, dy, dx, dx_bf16, dx_accumulate, dw_partial, rows, d,
                                       rows_per_block, eps, inv_d, s_sums);
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
// scheme of rmsnorm_bwd_regs: thread t owns the columns of vectors t, t + 256, … of each row, so
// x and dy are read from DRAM once (layernorm_bwd re-reads them for dx) and dx is written once.
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
// HOT: rmsnorm_bwd_regs_f32_v1 rmsnorm_bwd_regs_f32_v2 rmsnorm_bwd_regs_f32_v4
// HOT: rmsnorm_bwd_regs_f32_v8 rmsnorm_bwd_regs_bf16_v1 rmsnorm_bwd_regs_bf16_v2
// HOT: rmsnorm_bwd_regs_bf16_v4
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
      layernorm_bwd_##SUF(const T* x, const T* dy, T* dx, bf16* dx_bf16, int dx_accumulate,     \
                          int d, float eps) {                                                    \
    layernorm_bwd<T>(x, dy, dx, dx_bf16, dx_accumulate, d, eps);                                 \
  }

NORM_KERNELS(float, f32)
NORM_KERNELS(bf16, bf16)

// The row-in-registers RMSNorm backward, one kernel per vectors-per-thread VPT (norm.rs picks it
// from d); R rows at a time, up to about 32 loaded values per tensor and thread; two blocks per
// SM (128 registers) where that fits without spilling, one for the widest rows. f32 v4 and bf16
// v2 take one row at a time: with their loads unbranched, two rows need more than 128 registers
// (ptxas spilled), and one row's 8 and 4 loads a thread already cover DRAM latency (NOTES.md).
#define RMS_BWD_REGS_KERNEL(T, SUF, VPT, R, MIN_BLOCKS)                                          \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS, MIN_BLOCKS)                          \
      rmsnorm_bwd_regs_##SUF##_v##VPT(                                                           \
      const T* x, const T* w, const T* dy, T* dx, bf16* dx_bf16, int dx_accumulate,             \
      float* dw_partial, int rows, int d, int rows_per_block, float eps) {                      \
    rmsnorm_bwd_regs<T, VPT, R>(x, w, dy, dx, dx_bf16, dx_accumulate, dw_partial, rows, d,      \
                                rows_per_block, eps);                                           \
  }

RMS_BWD_REGS_KERNEL(float, f32, 1, 4, 2)
RMS_BWD_REGS_KERNEL(float, f32, 2, 4, 2)
RMS_BWD_REGS_KERNEL(float, f32, 4, 1, 2)
RMS_BWD_REGS_KERNEL(float, f32, 8, 1, 1)
RMS_BWD_REGS_KERNEL(bf16, bf16, 1, 4, 2)
RMS_BWD_REGS_KERNEL(bf16, bf16, 2, 1, 2)
RMS_BWD_REGS_KERNEL(bf16, bf16, 4, 1, 1)

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
