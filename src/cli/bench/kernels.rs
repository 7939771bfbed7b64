//! `implicit bench kernels`' arguments; the benchmark is `bench::kernels`.

use crate::bench::kernels::KernelsBenchOptions;
use crate::cli::numbers::positive_usize;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct KernelsArgs {
    /// Write the results (device, commit, date, command, ceilings, results) here, atomically.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Micro-batch 1 only, and 10 samples per kernel.
    #[arg(long)]
    quick: bool,
    /// tools/bench_sdpa.py's JSON: PyTorch SDPA's times at the same attention shapes.
    #[arg(long)]
    sdpa: Option<PathBuf>,
    /// Micro-batches of 2048-token sequences (tokens per launch = micro-batch x 2048; attention
    /// runs that many sequences). Default 1,4,8 (1 with --quick).
    #[arg(long, value_delimiter = ',', value_parser = positive_usize)]
    micro_batches: Vec<usize>,
    /// Timed samples per kernel (median, min, max over them). Default 30 (10 with --quick).
    #[arg(long, value_parser = positive_usize)]
    samples: Option<usize>,
    /// Only kernels whose name contains one of these (comma-separated), e.g. gemm,flash,rmsnorm.
    /// The ceilings are always measured.
    #[arg(long, value_delimiter = ',')]
    filter: Vec<String>,
    /// Leave out the Hopper GEMM's rows (kernels/gemm_wgmma.cu, timed beside each GEMM row on
    /// compute capability 9.0 by default), e.g. when its tests (`cuda_kernels wgmma`) failed.
    #[arg(long)]
    no_wgmma: bool,
}

impl From<KernelsArgs> for KernelsBenchOptions {
    fn from(a: KernelsArgs) -> Self {
        Self {
            json: a.json,
            quick: a.quick,
            sdpa: a.sdpa,
            micro_batches: a.micro_batches,
            samples: a.samples,
            filter: a.filter,
            no_wgmma: a.no_wgmma,
        }
    }
}
