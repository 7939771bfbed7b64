//! `bench train --profile`: one training step's GPU time by kernel family and phase, from the
//! spans the backend's recorder measured with CUDA events (backend/cuda/profile.rs). Pure
//! arithmetic on the spans, unit-tested without a GPU.
//!
//! The GPU time from the origin event to the end event is split exactly into kernel time and
//! idle time: spans are taken in start order and each is charged only the part not already
//! covered by an earlier one (on one stream they never overlap, but nothing double counts if
//! they do); the time no span covers is the host gaps (the GPU waiting for launches, or for
//! the host between a download and the next launch), charged to the phase of the span that
//! follows, the tail to the last span's phase.

use serde::Serialize;
use std::collections::BTreeMap;

/// One bracketed launch or copy: milliseconds from the profile's origin event.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Span<'a> {
    pub name: &'a str,
    pub phase: &'a str,
    pub start_ms: f64,
    pub end_ms: f64,
}

/// What a kernel does, for the table's rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// mma.sync, wgmma, gemv and cuBLAS products.
    Gemm,
    AttentionForward,
    /// Flash attention's backward with its pre- and post-processing, plain attention's.
    AttentionBackward,
    /// RMSNorm and LayerNorm, forward and backward.
    Norm,
    Rope,
    Swiglu,
    /// Embedding lookups and their backward (also the row gathers of the loss).
    Embedding,
    CrossEntropy,
    /// Gradient norm, clipping and AdamW.
    Optimizer,
    /// Conversions, in-place adds, clamps.
    Elementwise,
    /// Host-to-device, device-to-host and device-to-device copies, memsets.
    Copies,
    RuleAdapter,
    /// A name this table does not know (a kernel added without a family).
    Other,
}

impl Family {
    pub fn label(self) -> &'static str {
        match self {
            Family::Gemm => "GEMM",
            Family::AttentionForward => "attention fwd",
            Family::AttentionBackward => "attention bwd",
            Family::Norm => "norms",
            Family::Rope => "rope",
            Family::Swiglu => "swiglu",
            Family::Embedding => "embedding",
            Family::CrossEntropy => "cross-entropy",
            Family::Optimizer => "optimizer",
            Family::Elementwise => "elementwise",
            Family::Copies => "copies",
            Family::RuleAdapter => "rule adapter",
            Family::Other => "other",
        }
    }
}

/// The family of a kernel (kernels/*.cu) or of the backend's copy spans.
pub fn family(name: &str) -> Family {
    let starts = |prefixes: &[&str]| prefixes.iter().any(|p| name.starts_with(p));
    // norm_gemv_: a decode product with its input norm inside; the product dominates.
    if starts(&["gemm_", "gemv_", "norm_gemv_", "cublas"]) {
        Family::Gemm
    } else if starts(&[
        "flash_fwd",
        "attention_hopper_fwd",
        "attn_plain_fwd",
        "model_attention_",
    ]) {
        Family::AttentionForward
    } else if starts(&["flash_bwd", "attn_plain_bwd"]) {
        Family::AttentionBackward
    } else if starts(&["rmsnorm_", "layernorm_", "model_norm_"]) {
        Family::Norm
    } else if starts(&["rope_", "model_qkv_rope_append"]) {
        Family::Rope
    } else if starts(&["swiglu_", "model_swiglu_"]) {
        Family::Swiglu
    } else if starts(&["embedding_", "model_embed_"]) {
        Family::Embedding
    } else if starts(&["cross_entropy_"]) {
        Family::CrossEntropy
    } else if starts(&["adamw_", "grad_sumsq_", "grad_norm_"]) {
        Family::Optimizer
    } else if starts(&["convert_", "add_f32_", "clamp_", "model_clamp_"]) {
        Family::Elementwise
    } else if starts(&["memcpy_", "memset_", "alloc_zeros", "model_kv_append"]) {
        Family::Copies
    } else if starts(&["rule_adapter_"]) {
        Family::RuleAdapter
    } else {
        Family::Other
    }
}

/// One family's time in each phase (the phases in [`StepProfile::phases`] order).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FamilyRow {
    pub family: &'static str,
    pub ms_by_phase: Vec<f64>,
    pub ms: f64,
    pub launches: usize,
}

/// One kernel (by name) over the whole step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KernelRow {
    pub name: String,
    pub family: &'static str,
    pub launches: usize,
    pub ms: f64,
}

/// The step's GPU time by family and phase; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepProfile {
    /// Origin event to end event.
    pub total_ms: f64,
    /// Covered by at least one span.
    pub kernel_ms: f64,
    /// Covered by none: the GPU idle, waiting on the host.
    pub gap_ms: f64,
    /// Phases in order of first appearance.
    pub phases: Vec<String>,
    /// Families with any time, most time first.
    pub families: Vec<FamilyRow>,
    /// Host gaps in each phase.
    pub gap_ms_by_phase: Vec<f64>,
    /// Every kernel by name, most time first.
    pub kernels: Vec<KernelRow>,
    pub spans: usize,
}

impl StepProfile {
    /// Aggregates `spans` (any order) of a profile that lasted `total_ms` on the GPU. Spans are
    /// clipped to [0, total_ms]; one with a NaN time counts for nothing.
    pub fn new(spans: &[Span], total_ms: f64) -> StepProfile {
        let total_ms = if total_ms.is_finite() {
            total_ms.max(0.0)
        } else {
            0.0
        };
        let mut order: Vec<&Span> = spans.iter().collect();
        order.sort_by(|a, b| a.start_ms.total_cmp(&b.start_ms));

        let mut phases: Vec<String> = Vec::new();
        let mut phase_index = |phase: &str| match phases.iter().position(|p| p == phase) {
            Some(i) => i,
            None => {
                phases.push(phase.to_string());
                phases.len() - 1
            }
        };
        // (family → (ms by phase index, launches)), (name → (family, launches, ms)).
        let mut by_family: BTreeMap<Family, (BTreeMap<usize, f64>, usize)> = BTreeMap::new();
        let mut by_name: BTreeMap<&str, (Family, usize, f64)> = BTreeMap::new();
        let mut gaps: BTreeMap<usize, f64> = BTreeMap::new();
        let mut covered_until = 0.0f64;
        let mut last_phase = None;
        for s in order {
            let clip = |t: f64| {
                if t.is_nan() {
                    0.0
                } else {
                    t.clamp(0.0, total_ms)
                }
            };
            let (start, end) = (clip(s.start_ms), clip(s.end_ms).max(clip(s.start_ms)));
            let p = phase_index(s.phase);
            last_phase = Some(p);
            if start > covered_until {
                *gaps.entry(p).or_default() += start - covered_until;
            }
            let own = (end - start.max(covered_until)).max(0.0);
            covered_until = covered_until.max(end);
            let f = family(s.name);
            let row = by_family.entry(f).or_default();
            *row.0.entry(p).or_default() += own;
            row.1 += 1;
            let k = by_name.entry(s.name).or_insert((f, 0, 0.0));
            k.1 += 1;
            k.2 += own;
        }
        let tail = total_ms - covered_until;
        if tail > 0.0 {
            let p = last_phase.unwrap_or_else(|| phase_index("step"));
            *gaps.entry(p).or_default() += tail;
        }

        let spread = |m: &BTreeMap<usize, f64>| -> Vec<f64> {
            (0..phases.len())
                .map(|i| m.get(&i).copied().unwrap_or(0.0))
                .collect()
        };
        let mut families: Vec<FamilyRow> = by_family
            .iter()
            .map(|(f, (ms, launches))| FamilyRow {
                family: f.label(),
                ms_by_phase: spread(ms),
                ms: ms.values().sum(),
                launches: *launches,
            })
            .collect();
        families.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let mut kernels: Vec<KernelRow> = by_name
            .into_iter()
            .map(|(name, (f, launches, ms))| KernelRow {
                name: name.to_string(),
                family: f.label(),
                launches,
                ms,
            })
            .collect();
        kernels.sort_by(|a, b| b.ms.total_cmp(&a.ms));
        let gap_ms_by_phase = spread(&gaps);
        let gap_ms = gap_ms_by_phase.iter().sum();
        StepProfile {
            total_ms,
            kernel_ms: families.iter().map(|r| r.ms).sum(),
            gap_ms,
            phases,
            families,
            gap_ms_by_phase,
            kernels,
            spans: spans.len(),
        }
    }

    /// The report's lines, each starting "profile" (gpu_check greps them into its summary):
    /// the headline against the host's clock, one line per family and the host gaps with their
    /// split by phase, the phases' totals, then the `top` kernels.
    pub fn lines(&self, host_step_ms: f64, unprofiled_median_ms: f64, top: usize) -> Vec<String> {
        let pct = |ms: f64| {
            if self.total_ms > 0.0 {
                100.0 * ms / self.total_ms
            } else {
                0.0
            }
        };
        let split = |by_phase: &[f64]| -> String {
            let parts: Vec<String> = self
                .phases
                .iter()
                .zip(by_phase)
                .filter(|(_, &ms)| ms > 0.0)
                .map(|(p, ms)| format!("{p} {ms:.2}"))
                .collect();
            parts.join(", ")
        };
        let mut out = vec![
            format!(
                "profile: step {:.2} ms on the GPU = kernels {:.2} ms ({:.1}%) + host gaps {:.2} ms ({:.1}%), {} spans; host clock {:.2} ms (GPU/host {:.3}); unprofiled median {:.2} ms (profiling overhead {:+.1}%)",
                self.total_ms,
                self.kernel_ms,
                pct(self.kernel_ms),
                self.gap_ms,
                pct(self.gap_ms),
                self.spans,
                host_step_ms,
                self.total_ms / host_step_ms,
                unprofiled_median_ms,
                100.0 * (host_step_ms / unprofiled_median_ms - 1.0)
            ),
        ];
        for r in &self.families {
            out.push(format!(
                "profile: {:<14} {:>9.2} ms {:>5.1}% {:>6} launches: {}",
                r.family,
                r.ms,
                pct(r.ms),
                r.launches,
                split(&r.ms_by_phase)
            ));
        }
        out.push(format!(
            "profile: {:<14} {:>9.2} ms {:>5.1}% {:>6}          : {}",
            "host gaps",
            self.gap_ms,
            pct(self.gap_ms),
            "",
            split(&self.gap_ms_by_phase)
        ));
        let phase_totals: Vec<f64> = (0..self.phases.len())
            .map(|i| {
                self.families.iter().map(|r| r.ms_by_phase[i]).sum::<f64>()
                    + self.gap_ms_by_phase[i]
            })
            .collect();
        out.push(format!(
            "profile: phases (kernels + gaps): {}",
            split(&phase_totals)
        ));
        for k in self.kernels.iter().take(top) {
            out.push(format!(
                "profile kernel: {:<28} {:<14} {:>6} x {:>9.1} us = {:>9.2} ms {:>5.1}%",
                k.name,
                k.family,
                k.launches,
                1e3 * k.ms / k.launches.max(1) as f64,
                k.ms,
                pct(k.ms)
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(name: &'static str, phase: &'static str, start_ms: f64, end_ms: f64) -> Span<'static> {
        Span {
            name,
            phase,
            start_ms,
            end_ms,
        }
    }

    fn row<'p>(p: &'p StepProfile, family: &str) -> &'p FamilyRow {
        p.families
            .iter()
            .find(|r| r.family == family)
            .unwrap_or_else(|| panic!("no row {family} in {p:?}"))
    }

    #[test]
    fn gaps_are_the_time_no_span_covers() {
        // 1 ms idle first, 0.5 ms between the GEMM and the norm, 2 ms after the last span.
        let spans = [
            span("gemm_nt_bf16", "forward", 1.0, 4.0),
            span("rmsnorm_fwd_bf16", "forward", 4.5, 5.0),
            span("adamw_f32", "optimizer", 5.0, 8.0),
        ];
        let p = StepProfile::new(&spans, 10.0);
        assert_eq!(p.phases, ["forward", "optimizer"]);
        assert_eq!(p.kernel_ms, 6.5);
        assert_eq!(p.gap_ms, 3.5);
        assert_eq!(p.gap_ms_by_phase, [1.5, 2.0]);
        assert_eq!(row(&p, "GEMM").ms_by_phase, [3.0, 0.0]);
        assert_eq!(row(&p, "optimizer").ms, 3.0);
        assert_eq!(p.kernel_ms + p.gap_ms, p.total_ms);
    }

    #[test]
    fn overlapping_spans_are_not_counted_twice() {
        // The second span starts inside the first: only its uncovered 1 ms counts; the third
        // lies wholly inside and counts nothing. Input order does not matter.
        let spans = [
            span("memcpy_dtod", "backward", 3.0, 4.0),
            span("gemm_tn_f32", "backward", 0.0, 3.0),
            span("flash_bwd_hd128", "backward", 2.0, 4.0),
        ];
        let p = StepProfile::new(&spans, 4.0);
        assert_eq!(row(&p, "GEMM").ms, 3.0);
        assert_eq!(row(&p, "attention bwd").ms, 1.0);
        assert_eq!(row(&p, "copies").ms, 0.0);
        assert_eq!(row(&p, "copies").launches, 1);
        assert_eq!(p.gap_ms, 0.0);
        assert_eq!(p.kernel_ms, 4.0);
    }

    #[test]
    fn phases_split_a_family_and_kernels_add_up() {
        let spans = [
            span("gemm_wgmma_nt_bf16", "forward", 0.0, 2.0),
            span("gemm_wgmma_nt_bf16", "recompute", 2.0, 4.0),
            span("gemm_wgmma_nn_f32", "backward", 4.0, 8.0),
            span("gemm_wgmma_nt_bf16", "backward", 8.0, 9.0),
        ];
        let p = StepProfile::new(&spans, 9.0);
        assert_eq!(p.phases, ["forward", "recompute", "backward"]);
        assert_eq!(row(&p, "GEMM").ms_by_phase, [2.0, 2.0, 5.0]);
        assert_eq!(row(&p, "GEMM").launches, 4);
        assert_eq!(p.kernels[0].name, "gemm_wgmma_nt_bf16");
        assert_eq!((p.kernels[0].launches, p.kernels[0].ms), (3, 5.0));
        assert_eq!((p.kernels[1].launches, p.kernels[1].ms), (1, 4.0));
    }

    #[test]
    fn spans_outside_the_step_are_clipped_and_an_empty_profile_is_all_gap() {
        let p = StepProfile::new(&[span("rope_bf16", "forward", -1.0, 12.0)], 10.0);
        assert_eq!((p.kernel_ms, p.gap_ms), (10.0, 0.0));
        let p = StepProfile::new(&[span("rope_bf16", "forward", f64::NAN, 1.0)], 2.0);
        assert_eq!((p.kernel_ms, p.gap_ms), (1.0, 1.0));
        let p = StepProfile::new(&[], 5.0);
        assert_eq!((p.kernel_ms, p.gap_ms), (0.0, 5.0));
        assert_eq!(p.phases, ["step"]);
        assert!(p
            .lines(5.0, 5.0, 3)
            .iter()
            .all(|l| l.starts_with("profile")));
    }

    #[test]
    fn report_lines_name_every_family_and_the_overhead() {
        let spans = [
            span("gemm_nt_bf16", "forward", 0.0, 6.0),
            span("cross_entropy_fwd_bf16", "loss", 7.0, 8.0),
        ];
        let lines = StepProfile::new(&spans, 10.0).lines(10.5, 10.0, 5);
        assert!(lines[0].contains("step 10.00 ms"), "{}", lines[0]);
        assert!(lines[0].contains("kernels 7.00 ms (70.0%)"), "{}", lines[0]);
        assert!(
            lines[0].contains("host gaps 3.00 ms (30.0%)"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("overhead +5.0%"), "{}", lines[0]);
        assert!(lines
            .iter()
            .any(|l| l.contains("GEMM") && l.contains("forward 6.00")));
        // Gap before the cross-entropy is the loss phase's, the tail too.
        assert!(lines
            .iter()
            .any(|l| l.contains("host gaps") && l.contains("loss 3.00")));
        assert!(lines
            .iter()
            .any(|l| l.contains("phases") && l.contains("forward 6.00, loss 4.00")));
        assert!(lines
            .iter()
            .any(|l| l.starts_with("profile kernel: gemm_nt_bf16")));
    }

    /// The `extern "C" __global__` names of a .cu text, with its macros expanded: a macro whose
    /// body declares kernels contributes one name per invocation, its `##` pasted.
    fn kernel_names(cu: &str) -> Vec<String> {
        let text = cu.replace("\\\n", " ");
        let mut names = Vec::new();
        let mut macros: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
        // Plain declarations span lines (the name follows `__launch_bounds__(…)`).
        let plain: Vec<&str> = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("#define"))
            .collect();
        names.extend(declared_names(&plain.join("\n")));
        for line in text.lines() {
            let line = line.trim();
            if let Some(def) = line.strip_prefix("#define ") {
                let Some(open) = def.find('(') else { continue };
                let Some(close) = def.find(')') else { continue };
                let params = def[open + 1..close]
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .collect();
                let templates = declared_names(&def[close + 1..]);
                if !templates.is_empty() {
                    macros.push((def[..open].trim().to_string(), params, templates));
                }
                continue;
            }
            for (name, params, templates) in &macros {
                let Some(args) = line.strip_prefix(&format!("{name}(")) else {
                    continue;
                };
                let Some(args) = args.split(')').next() else {
                    continue;
                };
                let args: Vec<&str> = args.split(',').map(str::trim).collect();
                for t in templates {
                    let pasted: String = t
                        .split("##")
                        .map(|piece| {
                            let piece = piece.trim();
                            params
                                .iter()
                                .position(|p| p == piece)
                                .map_or(piece, |i| args[i])
                        })
                        .collect();
                    names.push(pasted);
                }
            }
        }
        names
    }

    /// The name (or name template) after each `extern "C" __global__ void
    /// [__launch_bounds__(…)]` in `text`.
    fn declared_names(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (at, m) in text.match_indices("extern \"C\" __global__") {
            let mut rest = text[at + m.len()..].trim_start();
            rest = rest.strip_prefix("void").unwrap_or(rest).trim_start();
            if let Some(after) = rest.strip_prefix("__launch_bounds__") {
                let close = after.find(')').expect("__launch_bounds__ closes");
                rest = after[close + 1..].trim_start();
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '#')
                .collect();
            out.push(name);
        }
        out
    }

    #[test]
    fn the_cu_scanner_expands_kernel_macros() {
        let cu = "extern \"C\" __global__ void __launch_bounds__(256)\n    plain_kernel(int x) {}\n\
                  #define K(T, SUF) \\\n  extern \"C\" __global__ void __launch_bounds__(N) \\\n      \
                  thing_fwd_##SUF(const T* x) {} \\\n  extern \"C\" __global__ void thing_bwd_##SUF() {}\n\
                  K(float, f32)\nK(bf16, bf16)\n#define G(NAME, A) extern \"C\" __global__ void NAME(int a) {}\nG(my_gemm, 1)\n";
        assert_eq!(
            kernel_names(cu),
            [
                "plain_kernel",
                "thing_fwd_f32",
                "thing_bwd_f32",
                "thing_fwd_bf16",
                "thing_bwd_bf16",
                "my_gemm"
            ]
        );
    }

    /// The kernels of every kernels/*.cu, by [`kernel_names`].
    fn scanned_kernel_names() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("kernels/") {
            let path = entry.expect("kernels/ entry").path();
            if path.extension().is_some_and(|e| e == "cu") {
                let text = std::fs::read_to_string(&path).expect("a .cu file");
                names.extend(kernel_names(&text));
            }
        }
        names.sort();
        names
    }

    /// Every kernel in kernels/*.cu has a family: a new kernel without one fails here.
    #[test]
    fn every_kernel_in_kernels_dir_has_a_family() {
        let names = scanned_kernel_names();
        // Known kernels from each file the scanner must expand (macro-made names included).
        for known in [
            "gemm_wgmma_nt_bf16",
            "flash_bwd_hd128",
            "cross_entropy_fwd_bf16",
            "rmsnorm_bwd_bf16",
            "adamw_bf16",
        ] {
            assert!(
                names.iter().any(|n| n == known),
                "{known} not found in {names:?}"
            );
        }
        assert!(
            names.len() >= 50,
            "only {} kernels found: {names:?}",
            names.len()
        );
        let homeless: Vec<&String> = names
            .iter()
            .filter(|n| family(n) == Family::Other || n.contains('#'))
            .collect();
        assert!(
            homeless.is_empty(),
            "kernels without a family: {homeless:?}"
        );
    }

    #[test]
    fn the_backends_copy_spans_are_copies() {
        for name in [
            "memcpy_htod",
            "memcpy_dtoh",
            "memcpy_dtod",
            "memset_zeros",
            "alloc_zeros",
        ] {
            assert_eq!(family(name), Family::Copies, "{name}");
        }
        assert_eq!(family("cublasGemmStridedBatchedEx"), Family::Gemm);
        assert_eq!(family("something_new"), Family::Other);
    }

    /// With the feature, build.rs's list of the embedded kernels (from ptxas) is what the
    /// scanner finds in kernels/*.cu, so the test above sees every kernel.
    #[cfg(feature = "cuda")]
    #[test]
    fn the_scanner_finds_every_embedded_kernel() {
        let mut embedded = crate::backend::cuda::CudaBackend::embedded_kernel_names();
        embedded.sort();
        assert_eq!(scanned_kernel_names(), embedded);
    }
}
