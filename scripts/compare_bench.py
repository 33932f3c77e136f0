#!/usr/bin/env python3
"""Joins `pdbench bench` and peer_llamacpp.py results into one Markdown table.

usage: compare_bench.py DIR MODEL...   (reads DIR/pdbench-MODEL.json and DIR/llamacpp-MODEL.json)
"""
import json, sys

out_dir, models = sys.argv[1], sys.argv[2:]
lines = []
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
        lines.append(f"| {m} | {r['threads']} | {r['test']} | {r['tokens_per_s_mean']:.1f} ± {r['tokens_per_s_sd']:.1f} "
                     f"| {p['tokens_per_s_mean']:.1f} ± {p['tokens_per_s_sd']:.1f} | {ratio:.2f}× |")
    for r in ours["rows"]:
        if r["test"] == "decode-after-prompt-raw":
            via = next(x for x in ours["rows"]
                       if x["test"] == "decode-after-prompt-ar-method" and x["threads"] == r["threads"])
            overhead = 100 * (1 - via["tokens_per_s_mean"] / r["tokens_per_s_mean"])
            lines.append(f"| {m} | {r['threads']} | harness overhead (ar method vs raw decode) | "
                         f"{overhead:+.1f}% | | |")

print("# CPU speed: pdbench's AR backbone beside llama.cpp\n")
print(head)
print("Reproduce with `scripts/bench-cpu.sh` (it builds llama-cpp-python from source with GGML_NATIVE=ON). "
      "pp = one forward over N random prompt tokens from an empty cache; tg = N single-token greedy forwards "
      "(llama-bench's tests); mean ± sd over the measured repeats, after one warm-up.\n")
print("| model | threads | test | pdbench tokens/s | llama.cpp tokens/s | pdbench ÷ llama.cpp |")
print("|---|---|---|---|---|---|")
print("\n".join(lines))
