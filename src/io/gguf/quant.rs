//! Dequantisation of ggml tensor data to f32, following the block layouts of ggml-quants.c.
//!
//! Every block starts (or, for Q6_K, ends) with little-endian f16 scales; quants are packed
//! low nibble first.

use super::GgmlType;
use half::{bf16, f16};

/// The types [`dequantize`] handles.
pub(super) const SUPPORTED: [GgmlType; 8] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
];

/// `data` (whole blocks of `ty`, as validated when the file was opened) as f32; None if the
/// type is not supported.
pub(super) fn dequantize(ty: GgmlType, data: &[u8]) -> Option<Vec<f32>> {
    let block_bytes = ty.block_bytes() as usize;
    let n = data.len() / block_bytes * ty.block_len() as usize;
    let mut out = Vec::with_capacity(n);
    let blocks = data.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
        GgmlType::F16 => out.extend(blocks.map(|b| f16_at(b, 0))),
        GgmlType::BF16 => {
            out.extend(blocks.map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()));
        }
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| q6_k(b, &mut out)),
        _ => return None,
    }
    debug_assert_eq!(out.len(), n);
    Some(out)
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// 32 values: f16 scale d, 32 i8 quants; x = d * q.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
}

/// 32 values: f16 d, 16 bytes; element j is the low nibble of byte j, element j+16 the high
/// nibble; x = d * (q - 8).
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| d * (f32::from(q & 0xF) - 8.0)));
    out.extend(qs.iter().map(|&q| d * (f32::from(q >> 4) - 8.0)));
}

/// 32 values: f16 d, f16 m, 16 bytes of nibbles laid out as in Q4_0; x = d * q + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| d * f32::from(q & 0xF) + m));
    out.extend(qs.iter().map(|&q| d * f32::from(q >> 4) + m));
}

/// Scale and min of sub-block `j` of a K-quant: eight 6-bit pairs packed into 12 bytes
/// (ggml's `get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// 256 values in 8 sub-blocks of 32: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128
/// bytes of nibbles. Each 32 bytes of nibbles hold two sub-blocks (low nibbles, then high);
/// x = d * scale * q - dmin * min.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for (pair, qs) in b[16..144].chunks_exact(32).enumerate() {
        let (sc_lo, m_lo) = scale_min_k4(2 * pair, scales);
        let (sc_hi, m_hi) = scale_min_k4(2 * pair + 1, scales);
        let (d_lo, m_lo) = (d * f32::from(sc_lo), dmin * f32::from(m_lo));
        let (d_hi, m_hi) = (d * f32::from(sc_hi), dmin * f32::from(m_hi));
        out.extend(qs.iter().map(|&q| d_lo * f32::from(q & 0xF) - m_lo));
        out.extend(qs.iter().map(|&q| d_hi * f32::from(q >> 4) - m_hi));
    }
}

/// 256 values in 16 sub-blocks of 16: 128 bytes of low nibbles (ql), 64 bytes of high 2-bit
/// pairs (qh), 16 i8 scales, then f16 d; x = d * scale * (q - 32), q being 6 bits.
/// Each half of 128 values uses 64 bytes of ql and 32 of qh: value l + 32k takes the low or
/// high nibble of ql[l] / ql[l + 32] and bits 2k..2k+2 of qh[l].
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(b, 208);
    let scales = &b[192..208];
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &scales[8 * half..8 * half + 8];
        for k in 0..4 {
            // k = 0..4 selects (low nibble, ql[l]), (low, ql[l+32]), (high, ql[l]), (high, ql[l+32]).
            let lo_base = if k % 2 == 0 { 0 } else { 32 };
            let shift = if k < 2 { 0 } else { 4 };
            for l in 0..32 {
                let low = (ql[lo_base + l] >> shift) & 0xF;
                let high = (qh[l] >> (2 * k)) & 3;
                let q = i32::from(low | (high << 4)) - 32;
                let scale = f32::from(sc[l / 16 + 2 * k] as i8);
                out.push(d * scale * q as f32);
            }
        }
    }
}
