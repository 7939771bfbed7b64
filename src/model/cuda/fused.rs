//! A layer's weights as the GPU forward reads them: the attention-input projections in one
//! matrix and the FFN-input projections in another, so that each is one product (one pass over
//! the weights and one launch) whatever the number of rows; and how a forward's prefill rows
//! reach flash attention.

use crate::backend::cuda::{CudaBackend, DeviceBuffer};
use crate::error::Result;
use crate::model::weights::LayerWeights;
use crate::model::ModelConfig;
use half::bf16;

/// One layer on the GPU: bf16 matrices `[out, in]`; f32 RMSNorm weights (Llama), None for
/// OLMo's parameter-free LayerNorm.
pub(super) struct CudaLayer {
    pub attn_norm: Option<DeviceBuffer<f32>>,
    /// `[q_dim + 2·kv_dim, hidden]`: Wq, Wk, Wv one after the other, so a row of h·W_qkvᵀ is
    /// `[q | k | v]`.
    pub qkv: DeviceBuffer<bf16>,
    pub o_proj: DeviceBuffer<bf16>,
    pub mlp_norm: Option<DeviceBuffer<f32>>,
    /// `[2·ffn, hidden]`: Wg then Wu, so a row of h·W_guᵀ is `[gate | up]`.
    pub gate_up: DeviceBuffer<bf16>,
    pub down_proj: DeviceBuffer<bf16>,
}

impl CudaLayer {
    /// Concatenates the layer's projections on the GPU; the separate ones are freed when
    /// `layer` drops at the end, so a model holds each weight once.
    pub fn fuse(
        gpu: &CudaBackend,
        layer: LayerWeights<DeviceBuffer<bf16>, DeviceBuffer<f32>>,
    ) -> Result<CudaLayer> {
        let qkv = gpu.concat_bf16(&[&layer.q_proj, &layer.k_proj, &layer.v_proj])?;
        let gate_up = gpu.concat_bf16(&[&layer.gate_proj, &layer.up_proj])?;
        Ok(CudaLayer {
            attn_norm: layer.attn_norm,
            qkv,
            o_proj: layer.o_proj,
            mlp_norm: layer.mlp_norm,
            gate_up,
            down_proj: layer.down_proj,
        })
    }
}

/// How the forward's sequences with several new tokens reach flash attention.
pub(super) enum Prefill {
    /// Every sequence starts from an empty cache with `queries` new tokens: one flash
    /// attention launch over the whole batch (q, k, v contiguous `[sequences, queries, …]`),
    /// instead of one launch per sequence whose grid covers only that sequence's
    /// queries/64·heads blocks. `lse` is the kernel's `[sequences, heads, queries]` output.
    Batched {
        queries: usize,
        lse: DeviceBuffer<f32>,
    },
    /// The marked sequences go through flash attention one by one (reading their keys from
    /// their caches); the other rows take the plain kernel.
    PerSequence(Vec<bool>),
}

impl Prefill {
    /// [`Prefill::Batched`] for `sequences` sequences of `queries` tokens.
    pub fn batched(
        gpu: &CudaBackend,
        c: &ModelConfig,
        sequences: usize,
        queries: usize,
    ) -> Result<Prefill> {
        Ok(Prefill::Batched {
            queries,
            lse: gpu.alloc(sequences * c.num_heads * queries)?,
        })
    }
}
