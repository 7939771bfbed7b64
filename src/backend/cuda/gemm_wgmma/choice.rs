//! `IMPLICIT_GEMM`: which kernels [`CudaBackend::gemm_bf16`] gives the large products
//! (kernels/gemm_wgmma.cu or kernels/gemm.cu), and whether the wgmma kernels may pair their
//! blocks in 2-block clusters. Read once per process.

#[cfg(doc)]
use super::super::CudaBackend;
use crate::bail;
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// The environment variable that chooses [`CudaBackend::gemm_bf16`]'s kernels ([`GemmChoice`]).
pub const GEMM_ENV: &str = "IMPLICIT_GEMM";

/// Which kernels take [`CudaBackend::gemm_bf16`]'s large products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmChoice {
    /// kernels/gemm_wgmma.cu where the device, driver and shapes allow, else kernels/gemm.cu:
    /// `IMPLICIT_GEMM` unset, empty, `auto` or `wgmma`.
    Wgmma,
    /// kernels/gemm.cu (mma.sync) everywhere: `IMPLICIT_GEMM=mma`.
    Mma,
}

/// The value of `IMPLICIT_GEMM` that keeps the wgmma kernels but never pairs their blocks in
/// clusters ([`WgmmaCluster::Auto`] resolves to Off).
pub const GEMM_NO_CLUSTER: &str = "wgmma-nocluster";

impl GemmChoice {
    /// The choice a value of `IMPLICIT_GEMM` names (None: unset).
    pub fn parse(value: Option<&str>) -> Result<GemmChoice> {
        parse_gemm_env(value).map(|(choice, _)| choice)
    }
}

/// `IMPLICIT_GEMM`: the kernels, and whether the wgmma kernels may use 2-block clusters.
fn parse_gemm_env(value: Option<&str>) -> Result<(GemmChoice, bool)> {
    match value.map(str::trim) {
        None | Some("" | "auto" | "wgmma") => Ok((GemmChoice::Wgmma, true)),
        Some(GEMM_NO_CLUSTER) => Ok((GemmChoice::Wgmma, false)),
        Some("mma") => Ok((GemmChoice::Mma, false)),
        Some(other) => bail!(
            "{GEMM_ENV}={other:?}: expected 'wgmma' (the default: the Hopper GEMM where it \
             runs), '{GEMM_NO_CLUSTER}' (the same without 2-block clusters) or 'mma' \
             (kernels/gemm.cu everywhere)"
        ),
    }
}

/// `IMPLICIT_GEMM`, read once per process; an unknown value is an error at every product,
/// naming the variable.
fn gemm_env() -> Result<(GemmChoice, bool)> {
    static CHOICE: OnceLock<std::result::Result<(GemmChoice, bool), String>> = OnceLock::new();
    let choice = CHOICE.get_or_init(|| {
        let value = std::env::var(GEMM_ENV).ok();
        parse_gemm_env(value.as_deref()).map_err(|e| e.to_string())
    });
    choice.clone().map_err(Error)
}

/// `IMPLICIT_GEMM`'s choice of kernels, read once per process; an unknown value is an error at
/// every product, naming the variable.
pub fn gemm_choice() -> Result<GemmChoice> {
    gemm_env().map(|(choice, _)| choice)
}

/// Whether [`WgmmaCluster::Auto`] may pick 2-block clusters: false under
/// `IMPLICIT_GEMM=wgmma-nocluster` (and `mma`, which runs no wgmma kernel through the dispatch).
pub fn wgmma_clusters_allowed() -> Result<bool> {
    gemm_env().map(|(_, clusters)| clusters)
}
