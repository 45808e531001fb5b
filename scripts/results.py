#!/usr/bin/env python3
"""Writes docs/results.md and its plots from the runs of scripts/reproduce.sh.

Reads OUT/{eval,gen,speed}/*.json*, OUT/models/*/metrics.jsonl and OUT/commands.log;
writes DOCS/results.md, DOCS/results/*.png (gnuplot) and DOCS/results/data.json.
Python standard library only (Debian's python3)."""
import argparse
import glob
import json
import math
import os
import platform
import shutil
import subprocess

TOKENS_PER_STEP = 16 * 128  # --batch 16 --length 128 in scripts/reproduce.sh
MODELS = [("ar", 1), ("bd3-4", 4), ("bd3-8", 8), ("bd3-16", 16), ("mdlm", 128)]
LABEL = {"ar": "AR", "bd3-4": "BD3-LM B'=4", "bd3-8": "BD3-LM B'=8", "bd3-16": "BD3-LM B'=16",
         "mdlm": "MDLM (B'=L=128)", "bd3-4-clip": "BD3-LM B'=4, clipped", "bd3-16-clip": "BD3-LM B'=16, clipped"}


def read_json(path):
    with open(path) as f:
        return json.loads(f.read().strip().splitlines()[-1])


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def train_summary(out, name):
    """Steps, tokens, seconds and tokens/s of a training run (its last step line), and its
    clip-search events. The elapsed seconds are carried over resumes by the checkpoints."""
    rows = read_jsonl(os.path.join(out, "models", name, "metrics.jsonl"))
    last = [r for r in rows if "loss" in r][-1]
    tokens = last["step"] * TOKENS_PER_STEP
    summary = {"step": last["step"], "seconds": last["seconds"], "tokens": tokens,
               "tokens_per_s": tokens / last["seconds"] if last["seconds"] > 0 else float("nan")}
    clips = [r for r in rows if r.get("event") == "clip_search"]
    return summary, clips


def commands(out, needle):
    path = os.path.join(out, "commands.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [c.strip() for c in f if needle in c]


def fmt_cmds(cmds, limit=3):
    seen, lines = set(), []
    for c in cmds:
        if c not in seen:
            seen.add(c)
            lines.append(c)
    shown = lines[:limit]
    more = "" if len(lines) <= limit else f"\n# ... and {len(lines) - limit} more of the same kind (commands.log)"
    return "```sh\n" + "\n".join(shown) + more + "\n```\n"


def se_of(e):
    """The estimator's standard error on these fixed sequences (mask noise only)."""
    if e.get("mask_variance") is None:
        return float("nan")
    return math.sqrt(e["mask_variance"] / (e["sequences"] * e["samples"]))


def gnuplot(script, cwd):
    if shutil.which("gnuplot") is None:
        return False
    subprocess.run(["gnuplot"], input=script.encode(), cwd=cwd, check=True)
    return True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    a = ap.parse_args()
    out, docs = a.out, a.docs
    figdir = os.path.join(docs, "results")
    os.makedirs(figdir, exist_ok=True)
    data = {"steps": a.steps, "seed": a.seed}
    md = []
    w = md.append

    total = open(os.path.join(out, "last_run_seconds")).read().strip() if os.path.exists(
        os.path.join(out, "last_run_seconds")) else "?"
    cpu = "?"
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    w("# Results: the paper's findings at small scale\n")
    w("Written by `scripts/results.py` at the end of `scripts/reproduce.sh` (do not edit by hand; the\n"
      "commentary below is generated from the numbers). Every model: 4 layers, hidden 256, 4 heads,\n"
      "adaLN conditioning 128, length L = 128 (BOS included), a 4096-token BPE trained on the corpus,\n"
      f"batch 16, {a.steps} AdamW steps (lr 1e-3, 50 warmup steps, cosine to 1e-4, EMA), seed {a.seed}, so\n"
      f"every model sees the same {a.steps * 16 * 128:,} tokens. Training corpus: the King James Bible\n"
      "(Debian `bible-kjv`), 5% of its 128-token sequences held out as the test split. Zero-shot corpus:\n"
      "Ambrose Bierce, *The Devil's Dictionary* (1911, public domain; Debian `dict-devil`).\n")
    w(f"Machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}. "
      f"Whole run: {total} s (`scripts/reproduce.sh`; steps already done are skipped on a rerun, so a\n"
      "resumed run reports only its own part). Raw outputs: `out/reproduce/` (eval/, gen/, speed/, models/).\n")
    w("The paper's models are 110M-parameter transformers trained on 65B tokens (OWT) or LM1B; these are\n"
      "6M-parameter models trained on about a million tokens, so the absolute numbers are not comparable;\n"
      "what can be compared is the direction of each effect.\n")

    # ---------------------------------------------------------------- likelihood
    w("## Likelihood (the paper's Tables 1-2)\n")
    w("Test perplexity bound exp(NELBO) on the held-out split (4 draws of masks averaged; for AR the\n"
      "exact NLL: block size 1 with every token masked). `mask s.e.` is the standard error of the\n"
      "estimate from the random masks alone (the sequences are the same for every model).\n")
    w("| model | B' | test PPL (bound) | NELBO (nats/token) | mask s.e. (nats) | zero-shot PPL (Devil's Dictionary) | tokens seen | train time (s) | train tok/s |")
    w("|---|---|---|---|---|---|---|---|---|")
    lik = {}
    for name, bs in MODELS + [("bd3-4-clip", 4), ("bd3-16-clip", 16)]:
        p = os.path.join(out, "eval", name + ".json")
        if not os.path.exists(p):
            continue
        e = read_json(p)
        z = read_json(os.path.join(out, "eval", name + ".zeroshot.json"))
        s, _ = train_summary(out, name)
        lik[name] = {"eval": e, "zeroshot": z, "train": s, "block": bs}
        se = se_of(e)
        w(f"| {LABEL[name]} | {bs} | {e['ppl']:.2f} | {e['nelbo']:.4f} | "
          f"{'exact' if name == 'ar' else f'{se:.4f}'} | {z['ppl']:.2f} | {s['tokens']:,} | {s['seconds']:.0f} | "
          f"{s['tokens_per_s']:.0f} |")
    data["likelihood"] = lik
    w("")
    order = [n for n, _ in MODELS if n in lik]
    ppl = [lik[n]["eval"]["ppl"] for n in order]
    holds = all(ppl[i] < ppl[i + 1] for i in range(len(ppl) - 1))
    w("**Against the paper.** The paper's ordering is AR < BD3-4 < BD3-8 < BD3-16 < MDLM: likelihood\n"
      "improves as blocks shrink, interpolating between MDLM and AR. " +
      ("Here the ordering holds for every adjacent pair. " if holds else "Here it does not hold everywhere: ") +
      ", ".join(f"{LABEL[order[i]]} {'<' if ppl[i] < ppl[i + 1] else '>='} {LABEL[order[i + 1]]} "
                f"({ppl[i]:.1f} vs {ppl[i + 1]:.1f})" for i in range(len(ppl) - 1)) + ".")
    gaps = []
    for i in range(len(order) - 1):
        a_, b_ = lik[order[i]]["eval"], lik[order[i + 1]]["eval"]
        d = b_["nelbo"] - a_["nelbo"]
        se = math.sqrt(sum(x * x for x in [se_of(a_), se_of(b_)] if not math.isnan(x)))
        gaps.append((order[i], order[i + 1], d, se))
    w(" Gaps in NELBO against the masks' standard error: " +
      "; ".join(f"{LABEL[x]} -> {LABEL[y]}: {d:+.3f} nats ({'%.0f' % (abs(d) / s) if s > 0 else 'inf'} s.e.)"
                for x, y, d, s in gaps) +
      ". A gap of a few s.e. or less is within the noise of the masks; the noise of training itself (one\n"
      "seed per model) is not measured and is likely larger at this scale. The paper's gaps come from\n"
      "models trained to convergence; ours are trained for about one epoch, where the diffusion models,\n"
      "which learn from a harder, noisier objective, are further from their optimum than AR is.\n")
    zs = [lik[n]["zeroshot"]["ppl"] for n in order]
    zholds = all(zs[i] < zs[i + 1] for i in range(len(zs) - 1))
    w("**Zero-shot.** On The Devil's Dictionary (19th-century satirical prose, unseen in training) the\n"
      "perplexities are high for every model (a Bible-only vocabulary and style) and the ordering " +
      ("is the same as on the test split, as in the paper's zero-shot table (Table 3)." if zholds else
       "is " + " < ".join(LABEL[n] for n in sorted(order, key=lambda n: lik[n]['zeroshot']['ppl'])) +
       "; the paper (Table 3) finds BD3-LMs between AR and MDLM on most zero-shot sets, with exceptions.") + "\n")
    w(fmt_cmds(commands(out, " train ") , 7))
    w(fmt_cmds(commands(out, " eval "), 4))

    # plot: ppl vs block size
    pts = "\n".join(f"{lik[n]['block']} {lik[n]['eval']['ppl']} {lik[n]['zeroshot']['ppl']}" for n in order)
    with open(os.path.join(figdir, "ppl_vs_block.dat"), "w") as f:
        f.write("# block_size test_ppl zeroshot_ppl\n" + pts + "\n")
    plotted = gnuplot(
        "set terminal png size 720,480\nset output 'ppl_vs_block.png'\nset logscale x 2\n"
        "set xlabel \"block size B' (1 = AR, 128 = MDLM)\"\nset ylabel 'test perplexity bound'\n"
        "set y2label 'zero-shot perplexity bound'\nset y2tics\nset ytics nomirror\nset key top left\n"
        "set title 'Likelihood against block size (KJV, 6M parameters)'\n"
        "plot 'ppl_vs_block.dat' using 1:2 with linespoints pt 7 title 'KJV test split', "
        "'' using 1:3 axes x1y2 with linespoints pt 5 title \"Devil's Dictionary (zero-shot)\"\n", figdir)
    if plotted:
        w("![perplexity against block size](results/ppl_vs_block.png)\n")

    # ---------------------------------------------------------------- schedules
    w("## Noise schedules (the paper's Tables 5-6)\n")
    w("The same model and budget trained with the linear schedule on the full interval [1e-3, 1] and\n"
      "with the data-driven clipped schedule (`--clip-search`: every 160 steps the interval\n"
      "[beta, omega] of least NELBO variance on 2 validation batches, among widths 0.5-0.9). Columns:\n"
      "the perplexity bound (always on [1e-3, 1], so the rows are comparable), and the variance across\n"
      "mask draws of a sequence's training loss (the per-token NELBO of one sequence, 8 draws, 128\n"
      "sequences) under the training interval and under the full interval.\n")
    w("| B' | schedule | interval trained with | test PPL (bound) | loss variance, training interval | loss variance, [1e-3, 1] |")
    w("|---|---|---|---|---|---|")
    sched = {}
    for bs in (4, 16):
        for name, kind in ((f"bd3-{bs}", "linear"), (f"bd3-{bs}-clip", "clipped")):
            ti = os.path.join(out, "eval", name + ".train-interval.json")
            if name not in lik or not os.path.exists(ti):
                continue
            t = read_json(ti)
            li = read_json(os.path.join(out, "eval", name + ".linear-interval.json"))
            sched[name] = {"train_interval": t, "full_interval": li}
            w(f"| {bs} | {kind} | [{t['eps_min']:g}, {t['eps_max']:g}] | {lik[name]['eval']['ppl']:.2f} | "
              f"{t['mask_variance']:.4f} | {li['mask_variance']:.4f} |")
    data["schedules"] = sched
    w("")
    for bs in (4, 16):
        name = f"bd3-{bs}-clip"
        if name not in lik:
            continue
        _, clips = train_summary(out, name)
        if clips:
            w(f"Clip searches of B'={bs}: " + "; ".join(
                f"step {c['step']}: [{c['best'][0]:g}, {c['best'][1]:g}] (variance {min(x['variance'] for x in c['candidates']):.3g}"
                f" vs {c['candidates'][0]['variance']:.3g} on [1e-3, 1])" for c in clips) + ".\n")
        lin, clp = f"bd3-{bs}", name
        if lin in sched and clp in sched:
            v_lin = sched[lin]["train_interval"]["mask_variance"]
            v_clp = sched[clp]["train_interval"]["mask_variance"]
            p_lin, p_clp = lik[lin]["eval"]["ppl"], lik[clp]["eval"]["ppl"]
            w(f"**B'={bs} against the paper.** The paper finds that the clipped schedule lowers the variance\n"
              f"of the training loss by a large factor and lowers the perplexity (e.g. LM1B B'=4: [0.45, 0.95]\n"
              f"vs linear; B'=16: [0.3, 0.8]). Here the training loss's variance is {v_clp:.4f} clipped vs "
              f"{v_lin:.4f} linear ({'lower' if v_clp < v_lin else 'not lower'}, x{v_lin / v_clp if v_clp > 0 else float('inf'):.1f}),"
              f" and the perplexity bound {p_clp:.2f} vs {p_lin:.2f} "
              f"({'lower, as in the paper' if p_clp < p_lin else 'not lower: at one epoch of a small model the bias of training on part of the interval is not yet paid back by the lower variance'}).\n")
    w(fmt_cmds(commands(out, "interval") + commands(out, "--samples 8"), 4))

    # ---------------------------------------------------------------- generation
    w("## Generation (the paper's Table 7, in the style)\n")
    w("32 samples of 128 tokens (BOS + 127 generated) per row, one seed, KV cache on. Generative\n"
      "perplexity under the AR model of the likelihood table as judge (the paper uses GPT-2 Large; a judge\n"
      "trained on the same text flatters samples that look like that text, and it judges its own\n"
      "samples in the AR row), the mean unigram entropy of a sample in nats (low values flag\n"
      "repetitive samples, which a judge can score well), and NFE (denoising calls per sequence;\n"
      "commit calls are fused into the next block's first call).\n")
    w("| model | sampler | NFE / sequence | NFE / token | gen PPL | entropy | tokens/s (batch 32) |")
    w("|---|---|---|---|---|---|---|")
    gens = {}
    for path in sorted(glob.glob(os.path.join(out, "gen", "*.score.json"))):
        base = os.path.basename(path)[: -len(".score.json")]
        name, tag = base.split(".", 1)
        score = read_json(path)
        samples = read_jsonl(os.path.join(out, "gen", base + ".jsonl"))
        nfe = sum(s["nfe"] for s in samples) / len(samples)
        gen_tokens = sum(s["generated"] for s in samples) / len(samples)
        secs = max(s["seconds"] for s in samples)
        tps = sum(s["generated"] for s in samples) / secs if secs > 0 else float("nan")
        gens[base] = {"model": name, "tag": tag, "nfe": nfe, "nfe_per_token": nfe / gen_tokens,
                      "gen_ppl": score["gen_ppl"], "entropy": score["entropy"], "tokens_per_s": tps,
                      "method": samples[0].get("method", tag)}
    data["generation"] = gens
    tag_order = ["fh", "topp0.9", "ddpm-half", "ddpm-quarter"] + [f"tau{t}" for t in ("0.95", "0.8", "0.6", "0.4", "0.2")]
    tag_label = {"fh": "first-hitting", "topp0.9": "first-hitting, top-p 0.9", "ddpm-half": "DDPM, T = B'/2",
                 "ddpm-quarter": "DDPM, T = max(1, B'/4)"}
    for name, _ in MODELS:
        for tag in tag_order:
            g = gens.get(f"{name}.{tag}")
            if not g:
                continue
            label = tag_label.get(tag, f"threshold tau = {tag[3:]}")
            w(f"| {LABEL[name]} | {label} | {g['nfe']:.1f} | {g['nfe_per_token']:.3f} | {g['gen_ppl']:.2f} | "
              f"{g['entropy']:.2f} | {g['tokens_per_s']:.0f} |")
    w("")
    fh = {n: gens[f"{n}.fh"]["gen_ppl"] for n, _ in MODELS if f"{n}.fh" in gens}
    if fh:
        best = sorted(fh, key=fh.get)
        w("**Against the paper.** With the same number of NFE per token (first-hitting: one per token), the\n"
          "ranking by generative perplexity here is " + " < ".join(f"{LABEL[n]} ({fh[n]:.1f})" for n in best) +
          ". The paper finds BD3-LMs better than MDLM at equal or fewer NFE, smaller blocks better,\n"
          "and AR best. Fewer NFE (DDPM with fewer steps, lower thresholds) raise generative\n"
          "perplexity for every model, as in the paper; the cost is smallest for small blocks, where fewer\n"
          "tokens are decided at once.\n")
    # threshold curve
    w("### Threshold decoding: NFE per token against generative perplexity\n")
    w("`--threshold tau` reveals every masked position whose top probability is at least tau (at least\n"
      "one per call). The curve per model (tau = 0.95, 0.8, 0.6, 0.4, 0.2; first-hitting is NFE/token 1):\n")
    w("| model | " + " | ".join(f"tau {t}" for t in ("0.95", "0.8", "0.6", "0.4", "0.2")) + " |")
    w("|---|---|---|---|---|---|")
    for name in ("bd3-4", "bd3-16", "mdlm"):
        cells = []
        for t in ("0.95", "0.8", "0.6", "0.4", "0.2"):
            g = gens.get(f"{name}.tau{t}")
            cells.append(f"{g['nfe_per_token']:.3f} NFE/tok, PPL {g['gen_ppl']:.1f}" if g else "-")
        w(f"| {LABEL[name]} | " + " | ".join(cells) + " |")
    w("")
    lines = []
    for name in ("ar", "bd3-4", "bd3-8", "bd3-16", "mdlm"):
        pts = sorted((g["nfe_per_token"], g["gen_ppl"]) for g in gens.values()
                     if g["model"] == name and g["tag"] != "topp0.9")
        if pts:
            fn = f"gen_{name}.dat"
            with open(os.path.join(figdir, fn), "w") as f:
                f.write("# nfe_per_token gen_ppl\n" + "\n".join(f"{x} {y}" for x, y in pts) + "\n")
            lines.append(f"'{fn}' using 1:2 with linespoints pt 7 title \"{LABEL[name]}\"")
    if lines and gnuplot(
            "set terminal png size 720,480\nset output 'genppl_vs_nfe.png'\nset logscale x\n"
            "set xlabel 'NFE per generated token'\nset ylabel 'generative perplexity (AR judge)'\n"
            "set key top right\nset title 'Generation quality against NFE (DDPM budgets and thresholds)'\n"
            "plot " + ", ".join(lines) + "\n", figdir):
        w("![generative perplexity against NFE](results/genppl_vs_nfe.png)\n")
    w(fmt_cmds(commands(out, " sample ") + commands(out, " eval-gen "), 4))

    # ---------------------------------------------------------------- speed
    w("## Speed: samplers with and without the KV cache\n")
    w("One sequence of 512 tokens (four times the training length: past 128 the cache is a sliding\n"
      "window, and the uncached path recomputes the window's banded forward at every call), threads =\n"
      "cores. The uncached path computes the same tokens (tested in tests/test_sampler.cpp).\n")
    w("| model | sampler | KV cache | NFE | commit calls | seconds | tokens/s | speed-up of the cache |")
    w("|---|---|---|---|---|---|---|---|")
    speed = {}
    for path in sorted(glob.glob(os.path.join(out, "speed", "*-cache.json"))):
        base = os.path.basename(path)[: -len("-cache.json")]
        name, tag = base.split(".", 1)
        c = read_json(path)
        npath = os.path.join(out, "speed", base + "-nocache.json")
        n = read_json(npath) if os.path.exists(npath) else None
        speed[base] = {"cache": c, "nocache": n}
        label = {"fh": "first-hitting", "tau0.8": "threshold 0.8", "ddpm-half": "DDPM T = B'/2"}.get(tag, tag)
        for kind, r in (("on", c), ("off", n)):
            if r is None:
                continue
            up = f"x{c['tokens_per_s'] / n['tokens_per_s']:.1f}" if (kind == "on" and n) else ""
            w(f"| {LABEL[name]} | {label} | {kind} | {r['nfe']} | {r['commit_calls']} | {r['seconds']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {up} |")
    data["speed"] = speed
    w("")
    base = os.path.join(out, "speed", "bd3-4.fh-cache.json")
    extra = [("fh-unfused", "separate commit calls (--no-fused-commit)"), ("fh-batch8", "8 sequences per forward (--batch 8)")]
    if os.path.exists(base) and all(os.path.exists(os.path.join(out, "speed", f"bd3-4.{t}.json")) for t, _ in extra):
        ref = read_json(base)
        w("Fused commits and batching (BD3-LM B'=4, first-hitting, KV cache, 512 tokens per sequence):\n")
        w("| variant | sequences | NFE per sequence | commit calls | seconds | tokens/s (all sequences) | vs. fused, batch 1 |")
        w("|---|---|---|---|---|---|---|")
        w(f"| fused commit, batch 1 | 1 | {ref['nfe']} | {ref['commit_calls']} | {ref['seconds']:.2f} | {ref['tokens_per_s']:.0f} | x1.0 |")
        for tag, label in extra:
            rows = read_jsonl(os.path.join(out, "speed", f"bd3-4.{tag}.json"))
            secs = max(r["seconds"] for r in rows)
            tps = sum(r["generated"] for r in rows) / secs
            w(f"| {label} | {len(rows)} | {rows[0]['nfe']} | {rows[0]['commit_calls']} | {secs:.2f} | {tps:.0f} | "
              f"x{tps / ref['tokens_per_s']:.2f} |")
            speed[f"bd3-4.{tag}"] = rows
        w("")
    w(fmt_cmds(commands(out, "--length 512"), 4))

    with open(os.path.join(figdir, "data.json"), "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    with open(os.path.join(docs, "results.md"), "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
