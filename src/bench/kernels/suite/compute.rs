//! The compute-bound kernels: our GEMM against cuBLAS at the same shape (and, on compute
//! capability 9.0, the Hopper wgmma kernel as its own rows: the variant it picks, the same
//! without 2-block clusters, the other tile, and the register epilogue), and causal flash
//! attention against PyTorch SDPA.

use super::{
    Bench, BenchResult, GemmTimes, Reference, ATTENTION_BWD_TARGET, ATTENTION_FWD_TARGET,
    GEMM_TARGET, HEADS, SEQ,
};
use crate::backend::cpu::attention::AttentionShape;
use crate::backend::cuda::{
    wgmma_tile_for, AttentionChoice, DeviceBuffer, Float, GemmLayout, WgmmaCluster, WgmmaConfig,
    WgmmaEpilogue, WgmmaTile, GEMV_MAX_ROWS,
};
use crate::bench::inputs::{gb_s, rel_diff, tflops, Sample};
use crate::bench::timing::Timing;
use crate::error::Result;
use half::bf16;
use std::sync::atomic::{AtomicBool, Ordering};

/// Per timed wgmma variant: its time, and ‖wgmma − cuBLAS‖/‖cuBLAS‖ on one product when
/// cuBLAS ran.
type WgmmaTimes = Vec<((WgmmaConfig, WgmmaCluster), Timing, Option<f64>)>;

/// A wgmma tile as the bench rows name it.
fn tile_name(tile: WgmmaTile) -> &'static str {
    match tile {
        WgmmaTile::Square => "128x128",
        WgmmaTile::Wide | WgmmaTile::Auto => "128x256",
    }
}

impl Bench<'_> {
    /// Times one product (ours unless `skip_ours`, cuBLAS when `with_cublas`), over rotated
    /// random inputs; with `check`, also compares one product of each on the same inputs.
    /// `f32_acc`: f32 C accumulated into (the weight-gradient case), else bf16 C written.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn time_gemm<O: Sample + Float>(
        &mut self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        with_cublas: bool,
        ours: bool,
    ) -> Result<GemmTimes> {
        let (times, _) =
            self.time_gemms::<O>(layout, m, n, k, accumulate, with_cublas, ours, &[])?;
        Ok(times)
    }

    /// [`Bench::time_gemm`], and also kernels/gemm_wgmma.cu in each of the `wgmma` variants on
    /// the same inputs (the caller checked that it runs here and takes these shapes).
    #[allow(clippy::too_many_arguments)]
    fn time_gemms<O: Sample + Float>(
        &mut self,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        accumulate: bool,
        with_cublas: bool,
        ours: bool,
        wgmma: &[(WgmmaConfig, WgmmaCluster)],
    ) -> Result<(GemmTimes, WgmmaTimes)> {
        let gpu = self.gpu;
        let sets = self.sets(2 * (m * k + k * n));
        let a = self.randoms::<bf16>(sets, m * k, -1.0, 1.0)?;
        let b = self.randoms::<bf16>(sets, k * n, -1.0, 1.0)?;
        let mut c = if accumulate {
            gpu.zeros::<O>(m * n)?
        } else {
            gpu.alloc::<O>(m * n)?
        };
        let cublas = if with_cublas {
            Some(self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.cublas_gemm_bf16(layout, m, n, k, 1, &a[s], &b[s], &mut c, accumulate)
            })?)
        } else {
            None
        };
        let mut times = GemmTimes {
            cublas,
            ours: None,
            check: None,
        };
        // One product of cuBLAS, written (not accumulated), on the first inputs' leading rows.
        let count = (m * n).min(1 << 23);
        let mut reference: Option<Vec<O>> = None;
        if with_cublas && (ours || !wgmma.is_empty()) {
            let mut theirs = gpu.alloc::<O>(m * n)?;
            gpu.cublas_gemm_bf16(layout, m, n, k, 1, &a[0], &b[0], &mut theirs, false)?;
            reference = Some(self.download_prefix(&theirs, count)?);
        }
        if ours {
            times.ours = Some(self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.gemm_bf16_mma(layout, m, n, k, 1, &a[s], &b[s], &mut c, accumulate)
            })?);
            if let Some(y) = &reference {
                gpu.gemm_bf16_mma(layout, m, n, k, 1, &a[0], &b[0], &mut c, false)?;
                let x = self.download_prefix(&c, count)?;
                times.check = Some(rel_diff(&x, y));
            }
        }
        let mut wgmma_times = Vec::new();
        for &(config, cluster) in wgmma {
            // Its failure (e.g. on a driver the first H100 run did not see) is a note, and the
            // other rows go on (unless it left the GPU unusable, which the next row reports).
            let mut timed = || -> Result<(Timing, Option<f64>)> {
                let time = self.timer.time(&mut |i| {
                    let s = i % sets;
                    gpu.gemm_bf16_wgmma_variant(
                        config, cluster, layout, m, n, k, 1, &a[s], &b[s], &mut c, accumulate,
                    )
                })?;
                let mut check = None;
                if let Some(y) = &reference {
                    gpu.gemm_bf16_wgmma_variant(
                        config, cluster, layout, m, n, k, 1, &a[0], &b[0], &mut c, false,
                    )?;
                    let x = self.download_prefix(&c, count)?;
                    check = Some(rel_diff(&x, y));
                }
                Ok((time, check))
            };
            match timed() {
                Ok((time, check)) => wgmma_times.push(((config, cluster), time, check)),
                Err(e) => self.sink.note(&format!(
                    "gemm_wgmma {config:?} {cluster:?} {layout:?} m {m} n {n} k {k} failed: {e}"
                )),
            }
        }
        Ok((times, wgmma_times))
    }

    /// Whether kernels/gemm_wgmma.cu runs on this device; on a compute-capability-9.0 device
    /// where it cannot, says why once.
    fn wgmma_runs(&mut self) -> bool {
        static NOTED: AtomicBool = AtomicBool::new(false);
        match self.gpu.wgmma_available() {
            Ok(()) => true,
            Err(e) => {
                if self.gpu.compute_capability() == (9, 0) && !NOTED.swap(true, Ordering::Relaxed) {
                    self.sink.note(&format!("no gemm_wgmma rows: {e}"));
                }
                false
            }
        }
    }

    /// Our GEMM against cuBLAS at one shape; on Hopper also the wgmma kernel as its own rows:
    /// `gemm_wgmma_<layout>_<out>` is the variant `gemm_bf16_wgmma` picks (the default path:
    /// 2-block clusters with B multicast where they cost no wave), `… [<tile>, 1 block]` the
    /// same without clusters, `… [128x256]` / `… [128x128]` the other tile with the TMA
    /// epilogue where C allows it (clusters as picked), and `… [<tile>, regs]` the picked tile
    /// with the register epilogue and no clusters (the kernel of the first H100 run), so that
    /// one run shows what each lever is worth beside cuBLAS.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        &mut self,
        label: &str,
        layout: GemmLayout,
        m: usize,
        n: usize,
        k: usize,
        f32_acc: bool,
        tokens: Option<usize>,
    ) -> Result<()> {
        let gemv = layout == GemmLayout::NT && m <= GEMV_MAX_ROWS && k.is_multiple_of(8);
        let kernel = match (layout, f32_acc) {
            _ if gemv => {
                if f32_acc {
                    "gemv_nt_f32"
                } else {
                    "gemv_nt_bf16"
                }
            }
            (GemmLayout::NN, false) => "gemm_nn_bf16",
            (GemmLayout::NT, false) => "gemm_nt_bf16",
            (GemmLayout::TN, false) => "gemm_tn_bf16",
            (GemmLayout::NN, true) => "gemm_nn_f32",
            (GemmLayout::NT, true) => "gemm_nt_f32",
            (GemmLayout::TN, true) => "gemm_tn_f32",
        };
        let wgmma_kernel = match (layout, f32_acc) {
            (GemmLayout::NN, false) => "gemm_wgmma_nn_bf16",
            (GemmLayout::NT, false) => "gemm_wgmma_nt_bf16",
            (GemmLayout::TN, false) => "gemm_wgmma_tn_bf16",
            (GemmLayout::NN, true) => "gemm_wgmma_nn_f32",
            (GemmLayout::NT, true) => "gemm_wgmma_nt_f32",
            (GemmLayout::TN, true) => "gemm_wgmma_tn_f32",
        };
        let want_ours = self.wants(&[kernel, label, "gemm"]);
        // Decode-sized products (gemv) are not the wgmma kernel's business; the benchmark's
        // shapes are all multiples of 8, which TMA needs.
        let want_wgmma = !gemv
            && self.config.wgmma
            && self.wants(&[wgmma_kernel, label, "gemm", "wgmma"])
            && layout.vectorized(m, n, k)
            && k > 0
            && self.wgmma_runs();
        if !want_ours && !want_wgmma {
            return Ok(());
        }
        let with_cublas = self.cublas;
        let configs = if want_wgmma {
            let picked = wgmma_tile_for(m, n, 1, self.gpu.multiprocessors as usize);
            let other = match picked {
                WgmmaTile::Square => WgmmaTile::Wide,
                _ => WgmmaTile::Square,
            };
            vec![
                (WgmmaConfig::AUTO, WgmmaCluster::Auto),
                (
                    WgmmaConfig {
                        tile: picked,
                        epilogue: WgmmaEpilogue::Auto,
                    },
                    WgmmaCluster::Off,
                ),
                (
                    WgmmaConfig {
                        tile: other,
                        epilogue: WgmmaEpilogue::Auto,
                    },
                    WgmmaCluster::Auto,
                ),
                (
                    WgmmaConfig {
                        tile: picked,
                        epilogue: WgmmaEpilogue::Registers,
                    },
                    WgmmaCluster::Off,
                ),
            ]
        } else {
            Vec::new()
        };
        let (mut times, wgmma) = if f32_acc {
            self.time_gemms::<f32>(layout, m, n, k, true, with_cublas, want_ours, &configs)?
        } else {
            self.time_gemms::<bf16>(layout, m, n, k, false, with_cublas, want_ours, &configs)?
        };
        if let Some(time) = times.ours.take() {
            self.gemm_result(
                kernel,
                label,
                layout,
                (m, n, k),
                f32_acc,
                tokens,
                time,
                &times,
            );
        }
        for ((config, cluster), time, check) in wgmma {
            let theirs = GemmTimes {
                cublas: times.cublas.clone(),
                ours: None,
                check,
            };
            let kernel = match (config.tile, config.epilogue, cluster) {
                (WgmmaTile::Auto, _, _) => wgmma_kernel.to_string(),
                (tile, WgmmaEpilogue::Registers, _) => {
                    format!("{wgmma_kernel} [{}, regs]", tile_name(tile))
                }
                (tile, _, WgmmaCluster::Off) => {
                    format!("{wgmma_kernel} [{}, 1 block]", tile_name(tile))
                }
                (tile, _, _) => format!("{wgmma_kernel} [{}]", tile_name(tile)),
            };
            self.gemm_result(
                &kernel,
                label,
                layout,
                (m, n, k),
                f32_acc,
                tokens,
                time,
                &theirs,
            );
        }
        Ok(())
    }

    /// One GEMM row: `time` of `kernel`, against cuBLAS's time and with the check in `times`.
    /// (`kernel` may carry a variant after the name, which the `(+=)` mark follows.)
    #[allow(clippy::too_many_arguments)]
    fn gemm_result(
        &mut self,
        kernel: &str,
        label: &str,
        layout: GemmLayout,
        (m, n, k): (usize, usize, usize),
        f32_acc: bool,
        tokens: Option<usize>,
        time: Timing,
        times: &GemmTimes,
    ) {
        let (theirs, check) = (times.cublas.as_ref(), times.check);
        let flops = 2.0 * m as f64 * n as f64 * k as f64;
        let es = if f32_acc { 8 } else { 2 }; // C: f32 read and written, or bf16 written
        let bytes = (2 * (m * k + k * n) + es * m * n) as f64;
        let ours_tflops = tflops(flops, time.median_us);
        let reference = theirs.map(|t| Reference {
            name: "cuBLAS",
            median_us: t.median_us,
            tflops: Some(tflops(flops, t.median_us)),
            speed_ratio: t.median_us / time.median_us,
        });
        let fraction = reference.as_ref().map(|r| r.speed_ratio);
        let what = match layout {
            GemmLayout::NT => "Y=X·Wᵀ",
            GemmLayout::NN => "dX=dY·W",
            GemmLayout::TN => "dW+=dYᵀ·X",
        };
        let kernel = if f32_acc {
            format!("{kernel} (+=)")
        } else {
            kernel.to_string()
        };
        self.push(BenchResult {
            kernel,
            group: "gemm",
            shape: format!("{label} {what} {m}x{n}x{k}"),
            tokens,
            bytes,
            flops,
            gb_s: gb_s(bytes, time.median_us),
            time,
            tflops: Some(ours_tflops),
            ceiling: fraction.map(|_| "cuBLAS"),
            ceiling_fraction: fraction,
            reference,
            target: fraction.map(|_| format!("≥{:.0}% of cuBLAS", GEMM_TARGET * 100.0)),
            meets_target: fraction.map(|f| f >= GEMM_TARGET),
            check_rel_diff: check,
        });
    }

    /// Causal flash attention forward and backward for `batch` sequences of SEQ tokens.
    pub(super) fn attention(&mut self, batch: usize, head_dim: usize) -> Result<()> {
        let (fwd, bwd) = if head_dim == 64 {
            ("flash_fwd_hd64", "flash_bwd_hd64")
        } else {
            ("flash_fwd_hd128", "flash_bwd_hd128")
        };
        let hopper_fwd = if head_dim == 64 {
            "attention_hopper_fwd_hd64"
        } else {
            "attention_hopper_fwd_hd128"
        };
        if !self.wants(&[fwd, bwd, hopper_fwd, "flash", "attention"]) {
            return Ok(());
        }
        let gpu = self.gpu;
        let shape = AttentionShape {
            queries: SEQ,
            keys: SEQ,
            heads: HEADS,
            kv_heads: HEADS,
            head_dim,
        };
        let n = batch * SEQ * HEADS * head_dim;
        let lse_n = batch * HEADS * SEQ;
        let sets = self.sets(3 * n * 2);
        let qs = self.randoms::<bf16>(sets, n, -1.0, 1.0)?;
        let ks = self.randoms::<bf16>(sets, n, -1.0, 1.0)?;
        let vs = self.randoms::<bf16>(sets, n, -1.0, 1.0)?;
        let mut outs: Vec<DeviceBuffer<bf16>> = (0..sets)
            .map(|_| gpu.alloc::<bf16>(n))
            .collect::<Result<_>>()?;
        let mut lses: Vec<DeviceBuffer<f32>> = (0..sets)
            .map(|_| gpu.alloc::<f32>(lse_n))
            .collect::<Result<_>>()?;
        let label = format!("b{batch} s{SEQ} h{HEADS} d{head_dim} causal");
        let fwd_flops =
            4.0 * batch as f64 * HEADS as f64 * (SEQ as f64).powi(2) * head_dim as f64 / 2.0;
        let sdpa = self
            .config
            .sdpa
            .iter()
            .find(|e| {
                e.batch == batch && e.heads == HEADS && e.seq == SEQ && e.head_dim == head_dim
            })
            .cloned();

        // The dispatch first (the Hopper kernel on compute capability 9.0, its row named after
        // the kernel that ran), then, when that was not kernels/flash_attention.cu, the sm80
        // kernel on the same inputs as its own row (`fwd`, the name of its history).
        let dispatched = gpu.attention_forward_kernel(shape, batch);
        let ran_hopper = dispatched == hopper_fwd;
        let bytes = (2 * 4 * n + 4 * lse_n) as f64;
        let sdpa_fwd = sdpa.as_ref().map(|e| e.fwd_ms * 1e3);
        for sm80 in [false, true] {
            if sm80 && !ran_hopper {
                break;
            }
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                let (q, k, v) = (&qs[s], &ks[s], &vs[s]);
                if sm80 {
                    gpu.flash_attention_forward_sm80(
                        shape,
                        batch,
                        q,
                        k,
                        v,
                        &mut outs[s],
                        &mut lses[s],
                    )
                } else {
                    gpu.flash_attention_forward(shape, batch, q, k, v, &mut outs[s], &mut lses[s])
                }
            })?;
            let name = if ran_hopper && !sm80 { hopper_fwd } else { fwd };
            self.attention_result(
                name,
                &label,
                batch,
                bytes,
                fwd_flops,
                time,
                sdpa_fwd,
                ATTENTION_FWD_TARGET,
            );
        }
        // Every set's out and lse are now a forward's, for the backward.

        if self.wants(&[bwd, "flash", "attention"]) {
            let d_outs = self.randoms::<bf16>(sets, n, -1.0, 1.0)?;
            let mut dq = gpu.alloc::<bf16>(n)?;
            let mut dk = gpu.alloc::<bf16>(n)?;
            let mut dv = gpu.alloc::<bf16>(n)?;
            // q, k, v, out, dO, lse read; dq, dk, dv written (the f32 dq accumulator and the
            // row sums D are scratch, not counted).
            let bytes = (2 * 8 * n + 4 * lse_n) as f64;
            let sdpa_bwd = sdpa.as_ref().and_then(|e| e.bwd_ms).map(|ms| ms * 1e3);
            // The dispatching call (the Hopper kernel on compute capability 9.0, else the
            // sm80 one), named after the kernel it took; on Hopper also the sm80 kernel, so
            // that both show against SDPA in one run.
            let hopper =
                gpu.flash_attention_backward_choice(shape, batch)? == AttentionChoice::Hopper;
            let hopper_name = if head_dim == 64 {
                "flash_bwd_hopper_hd64"
            } else {
                "flash_bwd_hopper_hd128"
            };
            let time = self.timer.time(&mut |i| {
                let s = i % sets;
                gpu.flash_attention_backward(
                    shape, batch, &qs[s], &ks[s], &vs[s], &outs[s], &d_outs[s], &lses[s], &mut dq,
                    &mut dk, &mut dv,
                )
            })?;
            let name = format!("{}+pre+convert", if hopper { hopper_name } else { bwd });
            self.attention_result(
                &name,
                &label,
                batch,
                bytes,
                2.5 * fwd_flops,
                time,
                sdpa_bwd,
                ATTENTION_BWD_TARGET,
            );
            if hopper {
                let time = self.timer.time(&mut |i| {
                    let s = i % sets;
                    gpu.flash_attention_backward_sm80(
                        shape, batch, &qs[s], &ks[s], &vs[s], &outs[s], &d_outs[s], &lses[s],
                        &mut dq, &mut dk, &mut dv,
                    )
                })?;
                self.attention_result(
                    &format!("{bwd}+pre+convert"),
                    &label,
                    batch,
                    bytes,
                    2.5 * fwd_flops,
                    time,
                    sdpa_bwd,
                    ATTENTION_BWD_TARGET,
                );
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_result(
        &mut self,
        kernel: &str,
        shape: &str,
        batch: usize,
        bytes: f64,
        flops: f64,
        time: Timing,
        sdpa_us: Option<f64>,
        target: f64,
    ) {
        let rate = tflops(flops, time.median_us);
        let reference = sdpa_us.map(|us| Reference {
            name: "SDPA",
            median_us: us,
            tflops: Some(tflops(flops, us)),
            speed_ratio: us / time.median_us,
        });
        let target_text = if target >= 1.0 {
            "≥1.0x SDPA speed".to_string()
        } else {
            format!("≤{:.1}x SDPA time", 1.0 / target)
        };
        self.push(BenchResult {
            kernel: kernel.to_string(),
            group: "attention",
            shape: shape.to_string(),
            tokens: Some(batch * SEQ),
            bytes,
            flops,
            gb_s: gb_s(bytes, time.median_us),
            time,
            tflops: Some(rate),
            ceiling: self.matmul_tflops.map(|_| "cuBLAS matmul"),
            ceiling_fraction: self.matmul_tflops.map(|m| rate / m),
            meets_target: reference.as_ref().map(|r| r.speed_ratio >= target - 1e-9),
            target: reference.as_ref().map(|_| target_text),
            reference,
            check_rel_diff: None,
        });
    }
}
