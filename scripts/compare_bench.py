#!/usr/bin/env python3
"""Joins `pdbench bench` and peer_llamacpp.py results into one Markdown table.

usage: compare_bench.py DIR MODEL...   (reads DIR/pdbench-MODEL.json and DIR/llamacpp-MODEL.json)
"""
import json, sys


def mean_sd(r):
    """`mean ± sd`, or the mean alone where one repetition measured no spread."""
    sd = r.get("tokens_per_s_sd")
    return f"{r['tokens_per_s_mean']:.1f}" + ("" if sd is None else f" ± {sd:.1f}")


out_dir, models = sys.argv[1], sys.argv[2:]
lines = []
over = []
head = None
for m in models:
    ours = json.load(open(f"{out_dir}/pdbench-{m}.json"))
    peer = json.load(open(f"{out_dir}/llamacpp-{m}.json"))
    if head is None:
        h = ours["host"]
        commit = (ours["git"].get("commit") or "unknown")[:10]
        dirty = " (dirty tree)" if ours["git"].get("dirty") else ""
        head = (f"pdbench {ours['pdbench_version']} at {commit}{dirty} beside {peer['peer']}, "
                f"on {h['cpu_model']} ({h['logical_cores']} logical cores, "
                f"{h['memory_bytes'] / 2**30:.0f} GiB), {h['os']}.\n")
    peer_rows = {(r["threads"], r["test"]): r for r in peer["rows"]}
    for r in ours["rows"]:
        p = peer_rows.get((r["threads"], r["test"]))
        if p is None:
            continue
        ratio = r["tokens_per_s_mean"] / p["tokens_per_s_mean"]
        lines.append(f"| {m} | {r['threads']} | {r['test']} | {mean_sd(r)} | {mean_sd(p)} | {ratio:.2f}× |")
    for o in ours.get("overhead", []):
        over.append(f"| {m} | {o['threads']} | {o['harness_ns_per_token'] / 1e3:.1f} | "
                    f"{o['decode_ns_per_token'] / 1e6:.2f} | {o['harness_pct']:.2f}% | "
                    f"{o['paired_pct_median']:+.1f}% ({', '.join(f'{x:+.1f}' for x in o['paired_pct'])}) |")

print("# CPU speed: pdbench's AR backbone beside llama.cpp\n")
print(head)
print("Reproduce with `scripts/bench-cpu.sh` (it builds llama-cpp-python from source with GGML_NATIVE=ON). "
      "pp = one forward over N random prompt tokens from an empty cache; tg = N single-token greedy forwards "
      "(llama-bench's tests); mean ± sd over the measured repeats, after one warm-up.\n")
print("| model | threads | test | pdbench tokens/s | llama.cpp tokens/s | pdbench ÷ llama.cpp |")
print("|---|---|---|---|---|---|")
print("\n".join(lines))
print("\nHarness overhead while decoding with `ar`. *Harness share*: the per-token work of the `ar` method "
      "and the probe outside the model forward (token pick, step record, stop rule with HumanEval's stop strings), "
      "timed over 256 steps on the model's real logits, as a share of the median per-token decode time. "
      "*End to end*: 1 − ar-method tokens/s ÷ raw-loop tokens/s for interleaved pairs of decodes "
      "(median, then each pair); on a shared 2-core machine this one is dominated by noise.\n")
print("| model | threads | harness µs/token | decode ms/token | harness share | end to end |")
print("|---|---|---|---|---|---|")
print("\n".join(over))
