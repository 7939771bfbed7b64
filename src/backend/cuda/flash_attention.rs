//! Flash attention on the GPU (kernels/flash_attention.cu): FlashAttention-2 (Dao 2023),
//! causal, grouped-query heads, head_dim 64 or 128, bf16 in and out with f32 accumulation on
//! the tensor cores, the log-sum-exp saved by the forward for the backward. References:
//! `backend::cpu::attention::{causal_attention, causal_attention_backward}`; tests in
//! tests/cuda_kernels/attention.rs.
//!
//! Layouts are the CPU reference's, for `batch` independent sequences of equal length stored
//! one after the other: q, out, d_out, dq `[batch, queries, heads, head_dim]`; k, v, dk, dv
//! `[batch, keys, kv_heads, head_dim]`; lse `[batch, heads, queries]` f32. Query i sits at
//! position keys − queries + i (prefill over a KV cache when queries < keys); query head h reads
//! KV head h / (heads / kv_heads). Scale 1/√head_dim.
//!
//! Both directions dispatch: on compute capability 9.0 the forward runs
//! kernels/attention_hopper_fwd.cu (attention_hopper_fwd.rs) and the backward
//! kernels/attention_hopper_bwd.cu (attention_hopper_bwd.rs), FlashAttention-3's scheme (wgmma
//! and TMA), unless `IMPLICIT_ATTENTION=sm80` or that kernel cannot take the call (either
//! backward reads either forward's lse); `flash_attention_forward_sm80` and
//! `flash_attention_backward_sm80` always run this file's kernels.

use super::{kernel_error, CudaBackend, DeviceBuffer};
use crate::backend::cpu::attention::AttentionShape;
use crate::bail;
use crate::error::{Error, Result};
use cudarc::driver::{sys, DevicePtr, LaunchConfig};
use half::bf16;
use std::sync::OnceLock;

/// The environment variable that picks the attention kernels ([`AttentionChoice`]).
pub const ATTENTION_ENV: &str = "IMPLICIT_ATTENTION";

/// Which kernels [`CudaBackend::flash_attention_forward`] and
/// [`CudaBackend::flash_attention_backward`] run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionChoice {
    /// The Hopper kernels (wgmma and TMA, sm_90a) where the device and shapes allow, else
    /// kernels/flash_attention.cu: `IMPLICIT_ATTENTION` unset, empty, `auto` or `hopper`.
    Hopper,
    /// kernels/flash_attention.cu (mma.sync, sm_80 and later) everywhere:
    /// `IMPLICIT_ATTENTION=sm80`.
    Sm80,
}

impl AttentionChoice {
    /// The choice a value of `IMPLICIT_ATTENTION` names (None: unset).
    pub fn parse(value: Option<&str>) -> Result<AttentionChoice> {
        match value.map(str::trim) {
            None | Some("" | "auto" | "hopper") => Ok(AttentionChoice::Hopper),
            Some("sm80") => Ok(AttentionChoice::Sm80),
            Some(other) => bail!(
                "{ATTENTION_ENV}={other:?}: expected 'hopper' (the default: the Hopper kernels \
                 where they run) or 'sm80' (kernels/flash_attention.cu everywhere)"
            ),
        }
    }
}

/// `IMPLICIT_ATTENTION`'s choice, read once per process; an unknown value is an error at every
/// attention call, naming the variable.
pub fn attention_choice() -> Result<AttentionChoice> {
    static CHOICE: OnceLock<std::result::Result<AttentionChoice, String>> = OnceLock::new();
    let choice = CHOICE.get_or_init(|| {
        let value = std::env::var(ATTENTION_ENV).ok();
        AttentionChoice::parse(value.as_deref()).map_err(|e| e.to_string())
    });
    choice.clone().map_err(Error)
}

/// Where [`CudaBackend::flash_attention_forward_at`] finds one sequence inside larger buffers:
/// the element at which its q (and out) rows start, and the element at which its keys (and
/// values) start.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FlashOffsets {
    pub q: usize,
    pub kv: usize,
}

/// Threads per block of the forward and backward kernels (kernels/flash_attention.cu).
const BLOCK_THREADS: u32 = 128;
/// Queries per forward block, keys per backward block.
const TILE: usize = 64;
/// Most blocks along a grid's y and z dimensions (heads, batch).
const MAX_GRID_YZ: usize = 65535;

/// Dynamic shared memory of each kernel (kernels/flash_attention.cu asserts the same numbers).
fn fwd_smem(head_dim: usize) -> u32 {
    if head_dim == 64 {
        46080
    } else {
        87040
    }
}

fn bwd_smem(head_dim: usize) -> u32 {
    if head_dim == 64 {
        65536
    } else {
        75264
    }
}

/// A checked call: the shapes as the kernels' ints, and the element counts of each tensor.
pub(super) struct Checked {
    pub(super) queries: i32,
    pub(super) keys: i32,
    pub(super) heads: i32,
    pub(super) kv_heads: i32,
    /// Elements of q (and out, d_out, dq).
    pub(super) q_len: usize,
    /// Elements of k (and v, dk, dv).
    pub(super) kv_len: usize,
    /// Elements of lse: batch · heads · queries.
    pub(super) lse_len: usize,
}

pub(super) fn describe(s: AttentionShape, batch: usize) -> String {
    format!(
        "batch {batch}, queries {}, keys {}, heads {}, kv_heads {}, head_dim {}",
        s.queries, s.keys, s.heads, s.kv_heads, s.head_dim
    )
}

/// Checks the shape itself (head_dim 64 or 128, heads a multiple of kv_heads, queries ≤ keys,
/// sizes that fit the kernels' ints and a grid); the errors name the shapes.
pub(super) fn check_shape(what: &str, s: AttentionShape, batch: usize) -> Result<Checked> {
    let desc = || describe(s, batch);
    if s.head_dim != 64 && s.head_dim != 128 {
        bail!(
            "{what} ({}): head_dim {} is not supported (64 or 128)",
            desc(),
            s.head_dim
        );
    }
    check_dims(what, s, batch)
}

/// Everything [`check_shape`] checks but head_dim (kernels/attention_plain.cu takes any).
pub(super) fn check_dims(what: &str, s: AttentionShape, batch: usize) -> Result<Checked> {
    let desc = || describe(s, batch);
    if s.heads == 0 || s.kv_heads == 0 || !s.heads.is_multiple_of(s.kv_heads) {
        bail!(
            "{what} ({}): heads must be a positive multiple of kv_heads",
            desc()
        );
    }
    if s.queries > s.keys {
        bail!(
            "{what} ({}): more queries than keys (the keys include the queries' own)",
            desc()
        );
    }
    if s.heads > MAX_GRID_YZ || batch > MAX_GRID_YZ {
        bail!(
            "{what} ({}): heads and batch must be at most {MAX_GRID_YZ} (one launch)",
            desc()
        );
    }
    let int = |name: &str, v: usize| -> Result<i32> {
        match i32::try_from(v) {
            Ok(v) => Ok(v),
            Err(_) => bail!("{what} ({}): {name} = {v} does not fit in an int", desc()),
        }
    };
    let count = |dims: &[usize]| -> Result<usize> {
        match dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)) {
            Some(n) => Ok(n),
            None => bail!(
                "{what} ({}): a tensor has more elements than usize holds",
                desc()
            ),
        }
    };
    Ok(Checked {
        queries: int("queries", s.queries)?,
        keys: int("keys", s.keys)?,
        heads: int("heads", s.heads)?,
        kv_heads: int("kv_heads", s.kv_heads)?,
        q_len: count(&[batch, s.queries, s.heads, s.head_dim])?,
        kv_len: count(&[batch, s.keys, s.kv_heads, s.head_dim])?,
        lse_len: count(&[batch, s.heads, s.queries])?,
    })
}

impl Checked {
    /// The lengths of a forward call's q, k, v, out and lse against the shape.
    pub(super) fn forward_buffers(
        &self,
        what: &str,
        s: AttentionShape,
        batch: usize,
        [q, k, v, out, lse]: [usize; 5],
    ) -> Result<()> {
        for (name, layout, got, want) in [
            ("q", Q_LAYOUT, q, self.q_len),
            ("k", KV_LAYOUT, k, self.kv_len),
            ("v", KV_LAYOUT, v, self.kv_len),
            ("out", Q_LAYOUT, out, self.q_len),
            ("lse", LSE_LAYOUT, lse, self.lse_len),
        ] {
            check_buffer(what, s, batch, name, layout, got, want)?;
        }
        Ok(())
    }

    /// The lengths of one sequence's forward buffers inside larger ones (q and out read from
    /// element `at.q`, k and v from `at.kv`; lse exactly `[heads, queries]`).
    pub(super) fn forward_buffers_at(
        &self,
        what: &str,
        s: AttentionShape,
        [q, k, v, out, lse]: [usize; 5],
        at: FlashOffsets,
    ) -> Result<()> {
        for (name, len, start, n) in [
            ("q", q, at.q, self.q_len),
            ("out", out, at.q, self.q_len),
            ("k", k, at.kv, self.kv_len),
            ("v", v, at.kv, self.kv_len),
        ] {
            if start.checked_add(n).is_none_or(|end| end > len) {
                bail!(
                    "{what} ({}): {name} has {len} elements, the call reads {n} from element {start}",
                    describe(s, 1)
                );
            }
        }
        if lse != self.lse_len {
            bail!(
                "{what} ({}): lse has {lse} elements, the shape needs {}",
                describe(s, 1),
                self.lse_len
            );
        }
        Ok(())
    }

    /// The lengths of a backward call's inputs (q, k, v, out, d_out, lse) and outputs (dq, dk,
    /// dv) against the shape.
    pub(super) fn backward_buffers(
        &self,
        what: &str,
        s: AttentionShape,
        batch: usize,
        [q, k, v, out, d_out, lse]: [usize; 6],
        [dq, dk, dv]: [usize; 3],
    ) -> Result<()> {
        self.forward_buffers(what, s, batch, [q, k, v, out, lse])?;
        for (name, layout, got, want) in [
            ("d_out", Q_LAYOUT, d_out, self.q_len),
            ("dq", Q_LAYOUT, dq, self.q_len),
            ("dk", KV_LAYOUT, dk, self.kv_len),
            ("dv", KV_LAYOUT, dv, self.kv_len),
        ] {
            check_buffer(what, s, batch, name, layout, got, want)?;
        }
        Ok(())
    }
}

/// `got == want` for the buffer `name` of layout `layout`, or an error naming the shapes.
fn check_buffer(
    what: &str,
    s: AttentionShape,
    batch: usize,
    name: &str,
    layout: &str,
    got: usize,
    want: usize,
) -> Result<()> {
    if got != want {
        bail!(
            "{what} ({}): {name} has {got} elements, {layout} needs {want}",
            describe(s, batch)
        );
    }
    Ok(())
}

const Q_LAYOUT: &str = "[batch × queries × heads × head_dim]";
const KV_LAYOUT: &str = "[batch × keys × kv_heads × head_dim]";
const LSE_LAYOUT: &str = "[batch × heads × queries]";

impl CudaBackend {
    /// Causal attention out = softmax(q·kᵀ/√d + mask)·v for `batch` sequences (FlashAttention-2
    /// forward), and the log-sum-exp of each row of scaled scores, `lse[b, h, i]` =
    /// ln Σ_j exp(q_i·k_j/√d) over the keys query i sees, which
    /// [`CudaBackend::flash_attention_backward`] needs. Layouts: see the module docs. `out` is
    /// rounded to bf16 (nearest even); the scores, softmax and P·V accumulate in f32.
    /// Deterministic. head_dim must be 64 or 128.
    ///
    /// On Hopper (compute capability 9.0, `IMPLICIT_ATTENTION` unset or `hopper`) the call goes
    /// to kernels/attention_hopper_fwd.cu ([`CudaBackend::flash_attention_forward_hopper`])
    /// where that kernel takes the shape and buffers, else to kernels/flash_attention.cu
    /// ([`CudaBackend::flash_attention_forward_sm80`]); both write the same out and lse up to
    /// rounding.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_forward(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        let at = FlashOffsets { q: 0, kv: 0 };
        if self.hopper_forward_chosen(shape, batch, [q, k, v, &*out], at)? {
            return self.flash_attention_forward_hopper(shape, batch, q, k, v, out, lse);
        }
        self.flash_attention_forward_sm80(shape, batch, q, k, v, out, lse)
    }

    /// [`CudaBackend::flash_attention_forward`] on kernels/flash_attention.cu (mma.sync, sm_80
    /// and later) whatever the device and `IMPLICIT_ATTENTION`.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_forward_sm80(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA flash attention forward";
        let c = check_shape(WHAT, shape, batch)?;
        let lens = [q.len(), k.len(), v.len(), out.len(), lse.len()];
        c.forward_buffers(WHAT, shape, batch, lens)?;
        let at = FlashOffsets { q: 0, kv: 0 };
        self.flash_forward_launch(WHAT, shape, batch, &c, [q, k, v], at, out, lse)
    }

    /// [`CudaBackend::flash_attention_forward`] of one sequence whose q and out rows start at
    /// element `at.q` of larger buffers (the rows of a ragged batch, `[rows, heads, head_dim]`)
    /// and whose keys and values start at element `at.kv` of k and v (one layer of a KV cache,
    /// `[capacity, kv_heads, head_dim]`): no copy in or out. `lse` is `[heads, queries]`.
    /// Dispatched as [`CudaBackend::flash_attention_forward`] is.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flash_attention_forward_at(
        &self,
        shape: AttentionShape,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        at: FlashOffsets,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if self.hopper_forward_chosen(shape, 1, [q, k, v, &*out], at)? {
            return self.flash_attention_forward_hopper_at(shape, q, k, v, at, out, lse);
        }
        self.flash_attention_forward_sm80_at(shape, q, k, v, at, out, lse)
    }

    /// [`CudaBackend::flash_attention_forward_at`] on kernels/flash_attention.cu.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn flash_attention_forward_sm80_at(
        &self,
        shape: AttentionShape,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        at: FlashOffsets,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA flash attention forward (in place)";
        let c = check_shape(WHAT, shape, 1)?;
        let lens = [q.len(), k.len(), v.len(), out.len(), lse.len()];
        c.forward_buffers_at(WHAT, shape, lens, at)?;
        self.flash_forward_launch(WHAT, shape, 1, &c, [q, k, v], at, out, lse)
    }

    /// The forward kernel on checked buffers, q/out and k/v read from the given elements on.
    #[allow(clippy::too_many_arguments)]
    fn flash_forward_launch(
        &self,
        what: &str,
        shape: AttentionShape,
        batch: usize,
        c: &Checked,
        [q, k, v]: [&DeviceBuffer<bf16>; 3],
        at: FlashOffsets,
        out: &mut DeviceBuffer<bf16>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<()> {
        if c.q_len == 0 {
            return Ok(()); // no query: nothing to write
        }
        check_aligned(self, what, shape, batch, &[q, k, v, &*out])?;
        // 16-byte loads from the offsets too.
        if !at.q.is_multiple_of(8) || !at.kv.is_multiple_of(8) {
            bail!(
                "{what} ({}): element offsets {} (q) and {} (k, v) must be multiples of 8",
                describe(shape, batch),
                at.q,
                at.kv
            );
        }
        let kernel = if shape.head_dim == 64 {
            "flash_fwd_hd64"
        } else {
            "flash_fwd_hd128"
        };
        let smem = fwd_smem(shape.head_dim);
        raise_smem_limit(self, kernel, smem, || describe(shape, batch))?;
        let cfg = LaunchConfig {
            grid_dim: (
                shape.queries.div_ceil(TILE) as u32,
                shape.heads as u32,
                batch as u32,
            ),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        let scale_log2 = std::f32::consts::LOG2_E / (shape.head_dim as f32).sqrt();
        let q_range = at.q..at.q + c.q_len;
        let kv_range = at.kv..at.kv + c.kv_len;
        let (q_view, k_view) = (
            q.slice.slice(q_range.clone()),
            k.slice.slice(kv_range.clone()),
        );
        let v_view = v.slice.slice(kv_range);
        let mut out_view = out.slice.slice_mut(q_range);
        launch!(
            self,
            kernel,
            cfg,
            describe(shape, batch),
            [
                &q_view,
                &k_view,
                &v_view,
                &mut out_view,
                &mut lse.slice,
                &c.queries,
                &c.keys,
                &c.heads,
                &c.kv_heads,
                &scale_log2
            ]
        )
    }

    /// Gradients of [`CudaBackend::flash_attention_forward`] for the gradient `d_out` of its
    /// output, written (not accumulated) into `dq`, `dk`, `dv` (bf16; the query heads of a
    /// group are summed into their KV head in f32 first). `out` and `lse` are the forward's
    /// outputs on the same q, k, v (either forward's: both save the natural-log lse). Layouts:
    /// see the module docs. dk and dv are deterministic; dq's last bits can vary between runs.
    ///
    /// Takes the Hopper kernel ([`CudaBackend::flash_attention_backward_hopper`]) where
    /// [`CudaBackend::flash_attention_backward_choice`] says so, else
    /// [`CudaBackend::flash_attention_backward_sm80`].
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &DeviceBuffer<bf16>,
        d_out: &DeviceBuffer<bf16>,
        lse: &DeviceBuffer<f32>,
        dq: &mut DeviceBuffer<bf16>,
        dk: &mut DeviceBuffer<bf16>,
        dv: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        match self.flash_attention_backward_choice(shape, batch)? {
            AttentionChoice::Hopper => self.flash_attention_backward_hopper(
                shape, batch, q, k, v, out, d_out, lse, dq, dk, dv,
            ),
            AttentionChoice::Sm80 => self
                .flash_attention_backward_sm80(shape, batch, q, k, v, out, d_out, lse, dq, dk, dv),
        }
    }

    /// Which kernel [`CudaBackend::flash_attention_backward`] runs for this shape here: the
    /// Hopper one when `IMPLICIT_ATTENTION` allows it (not `sm80`), the device has compute
    /// capability 9.0 and the kernel takes the shape
    /// ([`CudaBackend::attention_hopper_bwd_supports`]); else kernels/flash_attention.cu's.
    /// Err only for an unknown `IMPLICIT_ATTENTION`.
    pub fn flash_attention_backward_choice(
        &self,
        shape: AttentionShape,
        batch: usize,
    ) -> Result<AttentionChoice> {
        Ok(
            if self.hopper_attention_allowed()?
                && self.attention_hopper_bwd_supports(shape, batch).is_ok()
            {
                AttentionChoice::Hopper
            } else {
                AttentionChoice::Sm80
            },
        )
    }

    /// Whether `IMPLICIT_ATTENTION` and the device (compute capability 9.0) allow the Hopper
    /// attention kernels at all; each direction then asks whether its kernel takes the call.
    /// Err only for an unknown `IMPLICIT_ATTENTION`.
    pub(super) fn hopper_attention_allowed(&self) -> Result<bool> {
        Ok(attention_choice()? == AttentionChoice::Hopper && self.compute_capability() == (9, 0))
    }

    /// The FlashAttention-2 backward (kernels/flash_attention.cu, mma.sync, sm_80 and later)
    /// behind [`CudaBackend::flash_attention_backward`], with the same contract.
    ///
    /// Allocates two f32 scratch buffers per call: D = rowsum(dO ∘ O) (`[batch, heads,
    /// queries]`) and the dQ accumulator (as large as q, in f32). dk and dv are deterministic;
    /// dq is summed over key tiles with f32 atomics, so its last bits can vary between runs.
    #[allow(clippy::too_many_arguments)]
    pub fn flash_attention_backward_sm80(
        &self,
        shape: AttentionShape,
        batch: usize,
        q: &DeviceBuffer<bf16>,
        k: &DeviceBuffer<bf16>,
        v: &DeviceBuffer<bf16>,
        out: &DeviceBuffer<bf16>,
        d_out: &DeviceBuffer<bf16>,
        lse: &DeviceBuffer<f32>,
        dq: &mut DeviceBuffer<bf16>,
        dk: &mut DeviceBuffer<bf16>,
        dv: &mut DeviceBuffer<bf16>,
    ) -> Result<()> {
        const WHAT: &str = "CUDA flash attention backward";
        let c = check_shape(WHAT, shape, batch)?;
        let lens = [q.len(), k.len(), v.len(), out.len(), d_out.len(), lse.len()];
        c.backward_buffers(WHAT, shape, batch, lens, [dq.len(), dk.len(), dv.len()])?;
        if c.kv_len == 0 {
            return Ok(()); // no key (so no query either): nothing to write
        }
        check_aligned(
            self,
            WHAT,
            shape,
            batch,
            &[q, k, v, out, d_out, &*dq, &*dk, &*dv],
        )?;
        let hd = shape.head_dim;
        let scale = 1.0 / (hd as f32).sqrt();
        let scale_log2 = std::f32::consts::LOG2_E * scale;
        let hd_int = hd as i32;
        // One allocation of at least one element each, so that the kernels always get valid
        // pointers (with no query they read neither).
        let mut delta = self.alloc::<f32>(c.lse_len.max(1))?;
        let mut dq_acc = self.alloc::<f32>(c.q_len.max(4))?;

        // 1. D = rowsum(dO ∘ O), dQ accumulator ← 0.
        if c.q_len > 0 {
            let rows = (c.q_len / hd) as i64;
            launch!(
                self,
                "flash_bwd_preprocess",
                self.grid_stride(c.q_len / hd * 32),
                describe(shape, batch),
                [
                    &out.slice,
                    &d_out.slice,
                    &mut delta.slice,
                    &mut dq_acc.slice,
                    &rows,
                    &c.queries,
                    &c.heads,
                    &hd_int
                ]
            )?;
        }

        // 2. dK, dV per key tile (written whole, zeros for keys no query sees), dQ accumulated.
        let kernel = if hd == 64 {
            "flash_bwd_hd64"
        } else {
            "flash_bwd_hd128"
        };
        let smem = bwd_smem(hd);
        raise_smem_limit(self, kernel, smem, || describe(shape, batch))?;
        let cfg = LaunchConfig {
            grid_dim: (
                shape.keys.div_ceil(TILE) as u32,
                shape.kv_heads as u32,
                batch as u32,
            ),
            block_dim: (BLOCK_THREADS, 1, 1),
            shared_mem_bytes: smem,
        };
        launch!(
            self,
            kernel,
            cfg,
            describe(shape, batch),
            [
                &q.slice,
                &k.slice,
                &v.slice,
                &d_out.slice,
                &lse.slice,
                &delta.slice,
                &mut dq_acc.slice,
                &mut dk.slice,
                &mut dv.slice,
                &c.queries,
                &c.keys,
                &c.heads,
                &c.kv_heads,
                &scale,
                &scale_log2
            ]
        )?;

        // 3. dQ = bf16(τ · accumulator).
        if c.q_len > 0 {
            let n4 = (c.q_len / 4) as i64;
            launch!(
                self,
                "flash_bwd_convert_dq",
                self.grid_stride(c.q_len / 4),
                describe(shape, batch),
                [&dq_acc.slice, &mut dq.slice, &n4, &scale]
            )?;
        }
        Ok(())
    }
}

/// The kernels read and write rows with 16-byte (cp.async) and 4-byte accesses: every
/// buffer must start 16-byte aligned (whole allocations always do).
fn check_aligned(
    backend: &CudaBackend,
    what: &str,
    shape: AttentionShape,
    batch: usize,
    buffers: &[&DeviceBuffer<bf16>],
) -> Result<()> {
    let stream = backend.stream();
    for buffer in buffers {
        let (ptr, _record) = buffer.slice.device_ptr(stream);
        if ptr % 16 != 0 {
            bail!(
                "{what} ({}): a buffer at {ptr:#x} is not 16-byte aligned",
                describe(shape, batch)
            );
        }
    }
    Ok(())
}

/// Allows `kernel` `bytes` of dynamic shared memory (over 48 KiB needs the opt-in; cheap,
/// so set on every call).
pub(super) fn raise_smem_limit(
    backend: &CudaBackend,
    kernel: &'static str,
    bytes: u32,
    shapes: impl FnOnce() -> String,
) -> Result<()> {
    backend
        .function(kernel)?
        .set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(|e| kernel_error(kernel, &shapes(), "raising the shared-memory limit", e))
}

#[cfg(test)]
mod tests {
    use super::AttentionChoice;

    #[test]
    fn the_attention_switch_names_its_choices() {
        for v in [None, Some(""), Some("auto"), Some(" hopper ")] {
            assert_eq!(AttentionChoice::parse(v).unwrap(), AttentionChoice::Hopper);
        }
        assert_eq!(
            AttentionChoice::parse(Some("sm80")).unwrap(),
            AttentionChoice::Sm80
        );
        let err = AttentionChoice::parse(Some("fa3")).unwrap_err().to_string();
        assert!(
            err.contains("IMPLICIT_ATTENTION") && err.contains("sm80"),
            "{err}"
        );
    }
}
