// RMSNorm, forward and backward. One block per row (rows are `d` contiguous elements), except
// the backward that holds rows in registers (`rmsnorm_bwd_regs_*`, d ≤ 8192), whose blocks take
// several rows; 16-byte vector accesses when d and every pointer allow, else scalar. The
// parameter-free LayerNorm is in layernorm.cu, the helpers both backwards share in norm_rows.cuh.
// CPU references: backend::cpu::ops::rms_norm and backend::cpu::backward::rms_norm_backward.
#include "norm_rows.cuh"

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
// HOT: rmsnorm_fwd_f32 rmsnorm_fwd_bf16 rmsnorm_bwd_f32 rmsnorm_bwd_bf16
// HOT: rmsnorm_bwd_regs_f32_v1 rmsnorm_bwd_regs_f32_v2 rmsnorm_bwd_regs_f32_v4
// HOT: rmsnorm_bwd_regs_f32_v8 rmsnorm_bwd_regs_bf16_v1 rmsnorm_bwd_regs_bf16_v2
// HOT: rmsnorm_bwd_regs_bf16_v4
#define RMSNORM_KERNELS(T, SUF)                                                                    \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      rmsnorm_fwd_##SUF(const T* x, const T* w, T* y, int d, float eps) {                        \
    rmsnorm_fwd<T>(x, w, y, d, eps);                                                             \
  }                                                                                              \
  extern "C" __global__ void __launch_bounds__(ROW_THREADS)                                      \
      rmsnorm_bwd_##SUF(const T* x, const T* w, const T* dy, T* dx, float* dw_partial, int rows, \
                        int d, int rows_per_block, float eps) {                                  \
    rmsnorm_bwd<T>(x, w, dy, dx, dw_partial, rows, d, rows_per_block, eps);                      \
  }

RMSNORM_KERNELS(float, f32)
RMSNORM_KERNELS(bf16, bf16)

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
