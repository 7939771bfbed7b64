"""Prints the figures that benches/NOTES.md and README.md quote from one run's JSON: ranges,
fractions of the ceilings and ratios, computed here rather than by hand.

    python3 benches/results/figures.py [benches/results/h100-2026-12-06]
"""
import json, sys, os
R = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "h100-2026-12-06")
J = lambda p: json.load(open(os.path.join(R, p)))
b = J("bench/bench.json"); s = J("bench/sdpa.json")
copy = b["ceilings"]["copy"]["gb_s"]
print(f"copy {copy:.1f} GB/s; cuBLAS", [(c['shape'], round(c['tflops'],1), round(c['time']['median_us'],1)) for c in b['ceilings']['cublas_gemm']])
rows = b["results"]
print("\n## memory-bound")
for r in rows:
    if r["group"] == "memory":
        t = r["time"]
        print(f"{r['kernel']:40s} {r['shape']:34s} {t['median_us']:8.1f} us {r['gb_s']:6.0f} GB/s {100*r['ceiling_fraction']:5.1f}% copy  bytes {r['bytes']/1e6:8.1f} MB  meets {r['meets_target']}  host_bound {t['host_bound']}")
print("\n## gemm")
gem = {}
for r in rows:
    if r["group"] == "gemm" and not r["kernel"].startswith("gemv"):
        wg = "wgmma" in r["kernel"]
        gem.setdefault(r["shape"], {})["wgmma" if wg else "mma"] = r
mma_f, wg_f, mma_t, wg_t, sp, cub = [], [], [], [], [], {}
for shape, d in gem.items():
    m, w = d["mma"], d["wgmma"]
    c = m["reference"]
    speed = m["time"]["median_us"] / w["time"]["median_us"]
    mma_f.append(m["ceiling_fraction"]); wg_f.append(w["ceiling_fraction"])
    mma_t.append(m["tflops"]); wg_t.append(w["tflops"]); sp.append(speed)
    lay = m["kernel"].split("_")[1]
    cub.setdefault(lay, []).append(c["tflops"])
    print(f"{shape:40s} mma {m['time']['median_us']:7.1f} us {m['tflops']:5.1f} TF {100*m['ceiling_fraction']:4.1f}% | wgmma {w['time']['median_us']:7.1f} us {w['tflops']:5.1f} TF {100*w['ceiling_fraction']:4.1f}% | cuBLAS {c['median_us']:7.1f} us {c['tflops']:5.1f} TF | wgmma/mma speed {speed:.2f}x | check {m['check_rel_diff']} {w['check_rel_diff']}")
print(f"mma.sync: {100*min(mma_f):.1f}-{100*max(mma_f):.1f}% of cuBLAS, {min(mma_t):.1f}-{max(mma_t):.1f} TF/s")
print(f"wgmma:    {100*min(wg_f):.1f}-{100*max(wg_f):.1f}% of cuBLAS, {min(wg_t):.1f}-{max(wg_t):.1f} TF/s; speedup over mma.sync {min(sp):.2f}-{max(sp):.2f}x")
for lay, v in cub.items(): print(f"cuBLAS {lay}: {min(v):.1f}-{max(v):.1f} TF/s")
allc = [x for v in cub.values() for x in v]; print(f"cuBLAS all: {min(allc):.1f}-{max(allc):.1f}")
peak = 989.4
for shape, d in gem.items():
    w = d["wgmma"]
    print(f"  wgmma {shape:40s} {100*w['tflops']/peak:.1f}% of 989.4; floor {w['flops']/peak/1e6:.1f} us vs {w['time']['median_us']:.1f}")
print("\n## gemv")
gsum = {}
for r in rows:
    if r["kernel"].startswith("gemv"):
        c = r["reference"]
        name = r["shape"].split()[1]
        gsum[name] = r["time"]["median_us"]
        print(f"{r['shape']:38s} {r['time']['median_us']:6.1f} us {r['gb_s']:6.0f} GB/s {100*r['gb_s']/copy:4.1f}% copy | cuBLAS {c['median_us']:6.1f} us; ours/cuBLAS speed {r['ceiling_fraction']:.3f}; cuBLAS time/ours {c['median_us']/r['time']['median_us']:.2f}; ours time/cuBLAS {r['time']['median_us']/c['median_us']:.2f}  check {r['check_rel_diff']:.2e}")
layer = 4 * gsum["q/k/v/o"] + 2 * gsum["gate/up"] + gsum["down"]
print(f"decode step from gemv rows: 32 x {layer:.1f} + {gsum['lm_head']:.1f} = {(32*layer + gsum['lm_head'])/1000:.3f} ms")
print("\n## flash")
sd = {r["head_dim"]: r for r in s["results"]}
for r in rows:
    if r["group"] == "attention":
        hd = 128 if "hd128" in r["kernel"] else 64
        fwd = r["kernel"].startswith("flash_fwd")
        key = "fwd" if fwd else "bwd"
        d, fl = sd[hd], sd[hd]["backends"]["flash"]
        print(f"{r['kernel']:30s} {r['time']['median_us']:7.1f} us {r['tflops']:6.1f} TF | SDPA default {d[key+'_ms']*1000:6.1f} us {d[key+'_tflops']:6.1f} TF: speed {r['reference']['speed_ratio']:.3f}x, our time/SDPA {r['time']['median_us']/(d[key+'_ms']*1000):.2f}x | SDPA flash backend {fl[key+'_ms']*1000:6.1f} us {fl[key+'_tflops']:6.1f} TF: speed {fl[key+'_ms']*1000/r['time']['median_us']:.3f}x | cudnn {d['backends']['cudnn'][key+'_tflops']:.1f} TF | {100*r['ceiling_fraction']:.1f}% of best cuBLAS")
print("\n## adamw")
ad = {r["kernel"]: r for r in rows if r["kernel"].startswith("adamw")}
print(f"sr/bf16 time {ad['adamw_bf16_sr']['time']['median_us']/ad['adamw_bf16']['time']['median_us']:.3f}")
n = b["config"]["optimizer_params"]
for k, r in ad.items():
    print(f"{k}: {r['time']['median_us']:.1f} us for {n} params; scaled to 6738415616: {r['time']['median_us']*6738415616/n/1000:.1f} ms; {r['bytes']/n:.0f} B/param")
gn = [r for r in rows if r["kernel"].startswith("grad_sumsq")][0]
print(f"grad norm: {gn['time']['median_us']:.1f} us, {gn['bytes']/4:.0f} f32, scaled to 6738415616: {gn['time']['median_us']*6738415616/(gn['bytes']/4)/1000:.1f} ms")
print("\n## train")
for f in ["bench_train_l4", "wgmma_l4", "bench_train_full", "wgmma_full"]:
    t = J(f"train/{f}.json"); p = t["torch"]
    print(f"{f:18s} {t['tokens_per_s']:9.1f} tok/s MFU {100*t['mfu']:.2f}% {t['achieved_tflops']:.1f} TF step {t['median_step_s']:.4f}s peak used {t['memory']['peak_used_bytes']/2**30:.2f} GiB plan {sum(t['plan'][k] for k in ('state','activations','workspace'))/2**30:.2f} GiB | torch {p['tokens_per_s']:.1f} MFU {100*p['mfu']:.2f}% peak {p['peak_memory_allocated_bytes']/2**30:.2f} GiB | ratio {t['tokens_per_s']/p['tokens_per_s']:.3f}")
    fpt = t["flops_per_token"]
    print(f"   flops/token {fpt:.4g}; 45% MFU = {0.45*t['peak_tflops']*1e12/fpt:.0f} tok/s; 100% = {t['peak_tflops']*1e12/fpt:.0f}; achieved/45%: {t['mfu']/0.45:.3f}")
l4, wl4, full, wfull = (J(f"train/{f}.json") for f in ["bench_train_l4", "wgmma_l4", "bench_train_full", "wgmma_full"])
print(f"wgmma/mma: l4 {wl4['tokens_per_s']/l4['tokens_per_s']:.3f}, full {wfull['tokens_per_s']/full['tokens_per_s']:.3f}")
print("\n## generate")
g = J("generate/bench_generate.json"); e = J("generate/bench_generate_eager.json")
ge = {r["batch"]: r for r in e["results"]}
mm = full["matmul_parameters"]
for r in g["results"]:
    B = r["batch"]; er = ge[B]; vt = r["vs_torch"]
    print(f"B={B}: prefill {r['prefill']['tokens_per_s']:.1f} tok/s ({r['prefill']['seconds']*1000:.1f} ms) vs torch {r['torch']['prefill']['tokens_per_s']:.1f} = {vt['prefill_speedup']:.3f}x; eager prefill {er['prefill']['tokens_per_s']:.1f}")
    print(f"      decode graphs {r['decode']['tokens_per_s']:.1f} tok/s step {r['decode']['step_ms']['median']:.3f} ms; eager {er['decode']['tokens_per_s']:.1f} step {er['decode']['step_ms']['median']:.3f} ms; graph saves {er['decode']['step_ms']['median']-r['decode']['step_ms']['median']:.3f} ms = {100*(1-r['decode']['step_ms']['median']/er['decode']['step_ms']['median']):.1f}%; torch {r['torch']['decode']['tokens_per_s']:.2f} step {r['torch']['decode']['step_ms']['median']:.1f} ms -> {vt['decode_speedup']:.2f}x")
    bw = r["bandwidth"]
    print(f"      weights {bw['weights_gb_s']:.0f} GB/s = {100*bw['weights_of_copy']:.1f}% of {g['copy_gb_s']:.0f}; +KV {bw['with_kv_gb_s']:.0f} = {100*bw['with_kv_of_copy']:.1f}%; eager weights {er['bandwidth']['weights_gb_s']:.0f} = {100*er['bandwidth']['weights_of_copy']:.1f}%; floor at copy {r['bytes_per_step']['weights']/g['copy_gb_s']/1e6:.3f} ms (weights) {(r['bytes_per_step']['weights']+r['bytes_per_step']['kv_mean'])/g['copy_gb_s']/1e6:.3f} ms (+KV)")
    print(f"      prefill 2*matmul_params*tokens/s = {2*mm*r['prefill']['tokens_per_s']/1e12:.1f} TF/s; torch {2*mm*r['torch']['prefill']['tokens_per_s']/1e12:.1f}; peak {r['peak_memory_bytes']/2**30:.2f} GiB; first tokens agree {vt['first_tokens_agree']}/{vt['first_tokens_compared']}")
for l in g["load"]["loads"]: print("load", l["label"], round(l["seconds"],2), round(l["gb_s"],2))
for l in g["torch"]["load"]["loads"]: print("torch load", l["label"], round(l["seconds"],2), round(l["gb_s"],2))
