//! Which variant of kernels/gemm_wgmma.cu a product runs (launched from gemm_wgmma.rs): the
//! block tile, from the waves each tiling takes on the device's multiprocessors, the epilogue,
//! TMA wherever C allows it, and whether blocks pair up in 2-block clusters that share B by
//! TMA multicast ([`wgmma_cluster_for`]). Each can be forced ([`WgmmaConfig`],
//! [`WgmmaCluster`]) by the tests and the benchmark, which cover and time every variant.

use super::{MAX_STRIDE_BYTES, TILE_M};

/// How much fewer waves a 128 × 128 tiling must take than 128 × 256 before it is chosen:
/// its main loop reads more operand bytes per FLOP (shared memory and L2), so a tie goes to the
/// wide tile. An assumption until the bench rows of both measure it (benches/NOTES.md).
const SQUARE_TILE_GAIN: f64 = 0.95;

/// The block tile of kernels/gemm_wgmma.cu.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgmmaTile {
    /// [`wgmma_tile_for`]'s choice for the shape and the device's multiprocessors.
    Auto,
    /// 128 × 256 (4 stages, wgmma m64n256k16): the most FLOPs per operand byte.
    Wide,
    /// 128 × 128 (6 stages, m64n128k16): twice the tiles, for shapes whose last wave of wide
    /// tiles would leave many multiprocessors idle.
    Square,
}

/// How kernels/gemm_wgmma.cu writes C.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgmmaEpilogue {
    /// TMA where [`tma_epilogue_problem`] finds none, else registers.
    Auto,
    /// Straight from the accumulators to global memory (any n; the only path for bf16 C += A·B,
    /// which rounds C + A·B once).
    Registers,
    /// Staged in shared memory and stored by TMA (C += A·B: TMA reduce-add in f32), overlapping
    /// the next tile's main loop. Needs 16-byte rows of C and a 16-byte aligned C.
    Tma,
}

/// Which kernel variant a product runs: what tests force and the benchmark names.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgmmaConfig {
    pub tile: WgmmaTile,
    pub epilogue: WgmmaEpilogue,
}

impl WgmmaConfig {
    /// Both choices left to the host code (what [`CudaBackend::gemm_bf16_wgmma`] runs).
    pub const AUTO: WgmmaConfig = WgmmaConfig {
        tile: WgmmaTile::Auto,
        epilogue: WgmmaEpilogue::Auto,
    };
}

impl WgmmaTile {
    pub(super) fn columns(self) -> usize {
        match self {
            WgmmaTile::Square => 128,
            WgmmaTile::Auto | WgmmaTile::Wide => 256,
        }
    }
}

/// Waves of work on `sms` multiprocessors for a tiling of `tile_n` columns, in units of one
/// 128 × 256 tile's main loop: ⌈tiles / sms⌉ × tile_n / 256.
fn tile_waves(m: usize, n: usize, batch: usize, tile_n: usize, sms: usize) -> f64 {
    let tiles = m.div_ceil(TILE_M) * n.div_ceil(tile_n) * batch;
    tiles.div_ceil(sms.max(1)) as f64 * tile_n as f64 / 256.0
}

/// The tile for a product of these sizes on `sms` multiprocessors: 128 × 128 where it takes
/// under [`SQUARE_TILE_GAIN`] of the waves of 128 × 256 (at the model's shapes: m 2048 with n
/// 11008, 6 → 5.5 waves; and products too small to fill the device), else 128 × 256.
#[doc(hidden)]
pub fn wgmma_tile_for(m: usize, n: usize, batch: usize, sms: usize) -> WgmmaTile {
    let wide = tile_waves(m, n, batch, 256, sms);
    let square = tile_waves(m, n, batch, 128, sms);
    if square < SQUARE_TILE_GAIN * wide {
        WgmmaTile::Square
    } else {
        WgmmaTile::Wide
    }
}

/// Whether a product's blocks pair up in clusters of 2 (kernels/gemm_wgmma.cu's `_mc` kernels:
/// the two tiles of a pair, one above the other, share B, each block loading half of it and
/// multicasting it to both).
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgmmaCluster {
    /// [`wgmma_cluster_for`]'s choice, or Off under `IMPLICIT_GEMM=wgmma-nocluster`.
    Auto,
    /// One block per tile, alone.
    Off,
    /// Clusters of 2 blocks sharing B (an error where the device fits no such cluster).
    Pair,
}

/// Whether a product of these sizes on `tile_n`-column tiles runs on 2-block clusters, given
/// `sms` multiprocessors and `clusters` 2-block clusters resident at once (the driver's
/// occupancy answer): Pair when there are at least 2 tile rows (a lone row would leave every
/// second block without a tile of its own) and the pairs take no more waves on the clusters
/// than the tiles on the multiprocessors (an odd row count leaves one block per column of the
/// last pair row idle, and the driver may fit fewer than sms / 2 clusters). Multicast then only
/// removes L2 → shared-memory traffic: B's bytes per pair of tiles are loaded once.
#[doc(hidden)]
pub fn wgmma_cluster_for(
    m: usize,
    n: usize,
    batch: usize,
    tile_n: usize,
    sms: usize,
    clusters: usize,
) -> WgmmaCluster {
    let tiles_m = m.div_ceil(TILE_M);
    if tiles_m < 2 || clusters == 0 {
        return WgmmaCluster::Off;
    }
    let columns = n.div_ceil(tile_n) * batch;
    let single_waves = (tiles_m * columns).div_ceil(sms.max(1));
    let pair_waves = (tiles_m.div_ceil(2) * columns).div_ceil(clusters);
    if pair_waves <= single_waves {
        WgmmaCluster::Pair
    } else {
        WgmmaCluster::Off
    }
}

/// Why C cannot be written through TMA (None: it can): bf16 accumulation (TMA's reduce-add
/// would round A·B to bf16 before adding, a second rounding), rows that are not 16-byte
/// multiples, an unaligned C, or a matrix over TMA's stride limit.
#[doc(hidden)]
pub fn tma_epilogue_problem(
    out_bytes: usize,
    m: usize,
    n: usize,
    accumulate: bool,
    pc: u64,
) -> Option<String> {
    if accumulate && out_bytes == 2 {
        return Some("bf16 C += A·B rounds once in registers".into());
    }
    if !(n * out_bytes).is_multiple_of(16) {
        return Some(format!(
            "C's rows are {} bytes, TMA needs a multiple of 16",
            n * out_bytes
        ));
    }
    if !pc.is_multiple_of(16) {
        return Some(format!("C is not 16-byte aligned (address {pc:#x})"));
    }
    if (m as u64)
        .checked_mul(n as u64)
        .and_then(|e| e.checked_mul(out_bytes as u64))
        .is_none_or(|b| b >= MAX_STRIDE_BYTES)
    {
        return Some(format!("C is {m} × {n}, over TMA's 2^40-byte stride limit"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The waves behind the tile choice at Llama-2-7B's products (T = 2048 and 4096 tokens) on
    /// an H100's 132 multiprocessors, as benches/NOTES.md tabulates them.
    #[test]
    fn the_square_tile_is_chosen_where_it_saves_a_wave() {
        let sms = 132;
        assert_eq!(tile_waves(2048, 11008, 1, 256, sms), 6.0); // 688 tiles
        assert_eq!(tile_waves(2048, 11008, 1, 128, sms), 5.5); // 1376 tiles
        for (m, n, tile) in [
            (2048, 4096, WgmmaTile::Wide),    // 2 waves either way
            (2048, 11008, WgmmaTile::Square), // 6 → 5.5
            (2048, 32000, WgmmaTile::Wide),   // 16 → 15.5: under the margin
            (4096, 4096, WgmmaTile::Wide),    // dW q/k/v/o: 4 either way
            (11008, 4096, WgmmaTile::Wide),   // dW gate/up: 11 → 10.5
            (4096, 11008, WgmmaTile::Wide),   // dW down, and gate/up at T = 4096
            (32000, 4096, WgmmaTile::Wide),   // dW lm_head: 31 → 30.5
            (512, 4096, WgmmaTile::Square),   // 64 wide tiles leave 68 SMs idle
            (8, 8, WgmmaTile::Square),        // one tile either way, the narrower one half the work
        ] {
            assert_eq!(wgmma_tile_for(m, n, 1, sms), tile, "{m} x {n}");
        }
        // Batches count: 32 heads of 512 × 512 are 256 wide tiles (2 waves) or 512 square (4 of
        // half the time): a tie.
        assert_eq!(wgmma_tile_for(512, 512, 32, sms), WgmmaTile::Wide);
    }

    /// The cluster choice at Llama-2-7B's products (T = 2048) on an H100: 132 multiprocessors
    /// and, assumed here, 66 resident 2-block clusters (one per pair of SMs; the driver's
    /// answer is read at run time).
    #[test]
    fn clusters_are_chosen_where_they_cost_no_wave() {
        let (sms, clusters) = (132, 66);
        for (m, n, tile_n) in [
            (2048, 4096, 256),  // q/k/v/o fwd, dX: 256 tiles = 128 pairs, 2 waves either way
            (2048, 11008, 128), // gate/up fwd (square tile): 1376 tiles, 11 waves either way
            (4096, 4096, 256),  // dW q/k/v/o
            (11008, 4096, 256), // dW gate/up: 86 tile rows
            (32000, 4096, 256), // dW lm_head: 250 tile rows
            (2048, 32000, 256), // lm_head fwd
        ] {
            assert_eq!(
                wgmma_cluster_for(m, n, 1, tile_n, sms, clusters),
                WgmmaCluster::Pair,
                "{m} x {n}"
            );
        }
        // One tile row: every second block would have nothing of its own.
        assert_eq!(
            wgmma_cluster_for(128, 4096, 1, 256, sms, clusters),
            WgmmaCluster::Off
        );
        assert_eq!(
            wgmma_cluster_for(100, 4096, 4, 256, sms, clusters),
            WgmmaCluster::Off
        );
        // No cluster fits: never.
        assert_eq!(
            wgmma_cluster_for(2048, 4096, 1, 256, sms, 0),
            WgmmaCluster::Off
        );
        // Three tile rows × 88 columns: 264 tiles are 2 waves alone, 176 pairs 3 waves on 66
        // clusters (the idle third of the last pair row costs a wave): alone.
        assert_eq!(
            wgmma_cluster_for(384, 88 * 256, 1, 256, sms, clusters),
            WgmmaCluster::Off
        );
        // Three tile rows × 10 columns: 30 tiles, 20 pairs, one wave either way: pairs.
        assert_eq!(
            wgmma_cluster_for(384, 2560, 1, 256, sms, clusters),
            WgmmaCluster::Pair
        );
        // Fewer clusters than sms / 2 fit: 256 tiles on 132 SMs are 2 waves, 128 pairs on 60
        // clusters 3: alone.
        assert_eq!(
            wgmma_cluster_for(2048, 4096, 1, 256, sms, 60),
            WgmmaCluster::Off
        );
    }

    #[test]
    fn c_that_tma_cannot_write_takes_the_register_epilogue() {
        assert!(tma_epilogue_problem(4, 100, 4096, true, 0).is_none()); // f32 +=: reduce-add
        assert!(tma_epilogue_problem(2, 100, 4096, false, 256).is_none());
        assert!(tma_epilogue_problem(2, 100, 4096, true, 0).is_some()); // bf16 +=
        assert!(tma_epilogue_problem(2, 100, 12, false, 0).is_some()); // 24-byte rows
        assert!(tma_epilogue_problem(4, 100, 12, false, 0).is_none()); // 48-byte rows
        assert!(tma_epilogue_problem(4, 100, 10, false, 0).is_some()); // 40-byte rows
        assert!(tma_epilogue_problem(4, 100, 4096, false, 8).is_some()); // unaligned C
        assert!(tma_epilogue_problem(4, 1 << 20, 1 << 19, false, 0).is_some()); // 2^41 bytes
    }
}
