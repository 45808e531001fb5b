#!/usr/bin/env python3
"""Summarises scripts/threshold_study.sh: per sampler (first-hitting "fh", threshold
"tauT", threshold with at least k reveals per call "tauTkK"), NFE per generated token and the
generative perplexity pooled over seeds (exp of the token-weighted mean log-perplexity),
with the seed-to-seed spread; then the verdict on the target (<= 0.5 NFE/token with a
pooled gen-PPL at most 10 % above first-hitting's). Writes OUT/summary.json, prints
markdown. Usage: scripts/threshold_study.py OUT"""
import glob
import json
import math
import os
import re
import statistics
import sys


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(out):
    rows = {}
    for path in sorted(glob.glob(os.path.join(out, "gen", "*.score.json"))):
        base = os.path.basename(path)[: -len(".score.json")]
        m = re.fullmatch(r"(.+)\.seed(\d+)", base)
        if not m:
            continue
        tag, seed = m.group(1), int(m.group(2))
        with open(path) as f:
            score = json.load(f)
        samples = read_jsonl(os.path.join(out, "gen", base + ".jsonl"))
        r = rows.setdefault(tag, {"tag": tag, "seeds": [], "nfe": 0, "generated": 0,
                                  "scored_tokens": 0, "log_ppl_sum": 0.0, "entropy": []})
        r["seeds"].append({"seed": seed, "gen_ppl": score["gen_ppl"],
                           "nfe_per_token": sum(s["nfe"] for s in samples) /
                           sum(s["generated"] for s in samples)})
        r["nfe"] += sum(s["nfe"] for s in samples)
        r["generated"] += sum(s["generated"] for s in samples)
        r["scored_tokens"] += score["tokens"]
        r["log_ppl_sum"] += score["tokens"] * math.log(score["gen_ppl"])
        r["entropy"].append(score["entropy"])
    if "fh" not in rows:
        sys.exit("threshold_study.py: no first-hitting scores in " + out)
    for r in rows.values():
        r["nfe_per_token"] = r["nfe"] / r["generated"]
        r["gen_ppl"] = math.exp(r["log_ppl_sum"] / r["scored_tokens"])
        logs = [math.log(s["gen_ppl"]) for s in r["seeds"]]
        # Standard error of the pooled log-perplexity from the seed-to-seed spread.
        r["log_ppl_se"] = statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else float("nan")
        r["entropy"] = statistics.mean(r["entropy"])
    ref = rows["fh"]
    for r in rows.values():
        r["ppl_ratio"] = r["gen_ppl"] / ref["gen_ppl"]
        r["meets_target"] = r["nfe_per_token"] <= 0.5 and r["ppl_ratio"] <= 1.10

    def parse(tag):
        m = re.fullmatch(r"tau([0-9.]+)(?:k([0-9]+))?", tag)
        return float(m.group(1)), int(m.group(2) or 1), m.group(1)

    def order(r):
        if r["tag"] == "fh":
            return (0, 0, 0)
        tau, k, _ = parse(r["tag"])
        return (1, k, -tau)

    def label(r):
        if r["tag"] == "fh":
            return "first-hitting"
        _, k, tau = parse(r["tag"])
        return f"threshold tau = {tau}" + (f", min-reveal {k}" if k > 1 else "")

    ordered = sorted(rows.values(), key=order)
    seeds = sorted({s["seed"] for r in ordered for s in r["seeds"]})
    print(f"seeds {seeds}; 32 samples of 128 tokens per seed\n")
    print("| sampler | NFE / token | gen PPL (pooled) | x first-hitting | per-seed gen PPL | "
          "entropy | <= 0.5 NFE/token and <= x1.10 |")
    print("|---|---:|---:|---:|---|---:|---|")
    for r in ordered:
        per_seed = ", ".join(f"{s['gen_ppl']:.0f}" for s in sorted(r["seeds"], key=lambda s: s["seed"]))
        print(f"| {label(r)} | {r['nfe_per_token']:.3f} | {r['gen_ppl']:.1f} | x{r['ppl_ratio']:.3f} | "
              f"{per_seed} | {r['entropy']:.2f} | {'yes' if r['meets_target'] else 'no'} |")
    ok = [r for r in ordered if r["meets_target"]]
    print()
    if ok:
        best = min(ok, key=lambda r: r["nfe_per_token"])
        print(f"Target met: {label(best)} at {best['nfe_per_token']:.3f} NFE/token, gen PPL "
              f"{best['gen_ppl']:.1f} = x{best['ppl_ratio']:.3f} first-hitting's {ref['gen_ppl']:.1f} "
              f"(seed-to-seed standard error of log gen-PPL: {best['log_ppl_se']:.3f} vs "
              f"{ref['log_ppl_se']:.3f}).")
    else:
        print("Target not met: no setting reaches <= 0.5 NFE/token within 10 % of first-hitting.")
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"first_hitting": ref, "rows": ordered}, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
