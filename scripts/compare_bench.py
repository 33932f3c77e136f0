#!/usr/bin/env python3
"""reports/cpu/README.md from scripts/bench-cpu.sh's rounds.

usage: compare_bench.py DIR ROUNDS MODEL...   (reads DIR/rounds/)
"""
import json, statistics, sys

out_dir, rounds, models = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
raw = f"{out_dir}/rounds"


# Per-round ratios spread wider than this (max − min over the median) are
# flagged: on a quiet host rounds agree within a few percent.
UNSTABLE = 0.10


def med(xs):
    return statistics.median(xs) if xs else float("nan")


speed, kern, width, over = [], [], [], []
head = None
for m in models:
    ours_r = [json.load(open(f"{raw}/pdbench-{m}-r{r}.json")) for r in range(1, rounds + 1)]
    peer_r = [json.load(open(f"{raw}/llamacpp-{m}-r{r}.json")) for r in range(1, rounds + 1)]
    first = ours_r[0]
    if head is None:
        h = first["host"]
        commit = (first["git"].get("commit") or "unknown")[:10]
        dirty = " (dirty tree)" if first["git"].get("dirty") else ""
        build = peer_r[0][0]["build_commit"]
        head = (f"pdbench {first['pdbench_version']} at {commit}{dirty} beside llama.cpp's llama-bench "
                f"(build {build}, GGML_NATIVE=ON), on {h['cpu_model']} ({h['logical_cores']} logical cores, "
                f"{h['memory_bytes'] / 2**30:.0f} GiB), {h['os']}.\n\n"
                f"CPU flags: {' '.join(h.get('cpu_flags', [])) or 'not recorded'}.\n")
        choice = first.get("kernel_choice", [])
        if choice:
            head += ("\nKernel instruction sets chosen by pdbench's start-up measurement (ns per block): "
                     + "; ".join(f"{c['format']} → {c['isa']} ("
                                 + ", ".join(f"{i} {ns:.2f}" for i, ns in c["candidates"]) + ")"
                                 for c in choice) + ".\n")
    # Decode and prefill, median over rounds of each round's mean.
    tests = {}
    for rep in ours_r:
        for row in rep["rows"]:
            if row["test"].startswith(("pp", "tg")):
                tests.setdefault((row["threads"], row["test"]), [[], []])[0].append(row["tokens_per_s_mean"])
    for rep in peer_r:
        for row in rep:
            test = f"pp{row['n_prompt']}" if row["n_gen"] == 0 else f"tg{row['n_gen']}"
            if (row["n_threads"], test) in tests:
                tests[(row["n_threads"], test)][1].append(row["avg_ts"])
    for (t, test), (a, b) in sorted(tests.items()):
        ratios = [x / y for x, y in zip(a, b)]
        spread = (max(ratios) - min(ratios)) / med(ratios) if ratios else 0.0
        # Rounds that disagree this much saw the host change under them.
        flag = f" ⚠ rounds differ by {100 * spread:.0f}%" if spread > UNSTABLE else ""
        speed.append(f"| {m} | {t} | {test} | {med(a):.1f} ({', '.join(f'{x:.1f}' for x in a)}) | "
                     f"{med(b):.1f} ({', '.join(f'{x:.1f}' for x in b)}) | **{med(ratios):.2f}×** "
                     f"({', '.join(f'{x:.2f}' for x in ratios)}){flag} |")
    # Kernels and the bandwidth limit.
    per_t = {}
    for k in first.get("kernels", []):
        kern.append(f"| {m} | {k['threads']} | {k['format']} | {k['kernel']} | {k['tensors']} | "
                    f"{k['bytes'] / 1e6:.0f} | {k['pass_gb_per_s']:.1f} | {k['stream_gb_per_s']:.1f} | "
                    f"{k['pct_of_stream']:.0f}% | {k['hot_ns_per_block']:.2f} | "
                    f"{k['hot_cycles_per_block'] or float('nan'):.0f} | {k['stream_ns_per_block']:.2f} |")
        b, s = per_t.get(k["threads"], (0, k["stream_gb_per_s"]))
        per_t[k["threads"]] = (b + k["bytes"], s)
    for t, (b, s) in sorted(per_t.items()):
        tg = next((v for (tt, name), v in tests.items() if tt == t and name.startswith("tg")), None)
        limit = s * 1e9 / b
        if tg:
            kern.append(f"| {m} | {t} | **all** | decode | | {b / 1e6:.0f} | | {s:.1f} | "
                        f"tg {med(tg[0]):.1f} tokens/s = **{100 * med(tg[0]) / limit:.0f}%** of the {limit:.1f} tokens/s the stream allows | | | |")
    # Verification cost curve.
    try:
        peer_w = json.load(open(f"{raw}/llamacpp-widths-{m}.json"))
    except FileNotFoundError:
        peer_w = []
    peer_cost = {}
    for row in peer_w:
        peer_cost[(row["n_threads"], row["n_prompt"])] = row["avg_ns"] / 1e6
    for w in first.get("widths", []):
        p = peer_cost.get((w["threads"], w["width"]))
        p1 = peer_cost.get((w["threads"], 1))
        width.append(f"| {m} | {w['threads']} | {w['width']} | {w['forward_ns_median'] / 1e6:.2f} | "
                     f"{(w['cost_vs_width_1'] or float('nan')):.2f} | "
                     + (f"{p:.2f} | {p / p1:.2f} |" if p and p1 else "– | – |"))
    for o in first.get("overhead", []):
        over.append(f"| {m} | {o['threads']} | {o['harness_ns_per_token'] / 1e3:.1f} | "
                    f"{o['decode_ns_per_token'] / 1e6:.2f} | {o['harness_pct']:.2f}% | "
                    f"{o['paired_pct_median']:+.1f}% |")

print("# CPU speed: pdbench's AR backbone beside llama.cpp\n")
print(head)
print(f"Reproduce with `scripts/bench-cpu.sh` ({rounds} rounds; in each, `pdbench bench` then `llama-bench` on the "
      "same file and thread counts; the raw JSON is in rounds/). pp = one forward over N random prompt tokens from an "
      "empty cache; tg = N single-token greedy forwards (llama-bench's tests). Each cell: the median of the rounds' "
      "means, then each round's; the ratio is taken per round, then the median. ⚠ marks a ratio whose "
      f"rounds differ by more than {100 * UNSTABLE:.0f}% of it: the host changed during the run, so read it "
      "as a range, not a figure.\n")
print("| model | threads | test | pdbench tokens/s | llama.cpp tokens/s | pdbench ÷ llama.cpp |")
print("|---|---|---|---|---|---|")
print("\n".join(speed))
print("\n## Kernels against memory\n")
print("`pdbench bench --kernels`: each format's matvec over all of the model's tensors of that format (one "
      "decode step's worth, streamed from memory) beside a streaming read of the same thread count measured in "
      "the same process; *hot* times one L2-resident slice with the activations quantized beforehand (compute "
      "alone), in ns and core cycles per weight block (32 or 256 values of one column); *stream ns/block* is "
      "what the streaming read allows. Hot below stream: the kernel can keep up with memory on this host. "
      "Above 100% of stream means part of the weights stayed in the last-level cache (small models) or the "
      "kernel's prefetching outran the plain streaming read.\n")
print("| model | threads | format | kernel | tensors | MB per pass | pass GB/s | stream GB/s | % of stream | hot ns/block | hot cycles/block | stream ns/block |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
print("\n".join(kern))
print("\n## The verification cost curve\n")
print("One forward of k new rows (logits at every row, as a verifier needs) after a 64-token context: pdbench "
      "`bench --widths`, llama.cpp `llama-bench -p k -d 64`. cost(k) ÷ cost(1) is what verifying k drafted tokens "
      "costs in decode steps: the figure that decides whether a draft-and-verify method can win.\n")
print("| model | threads | k | pdbench ms | pdbench cost(k) ÷ cost(1) | llama.cpp ms | llama.cpp cost(k) ÷ cost(1) |")
print("|---|---|---|---|---|---|---|")
print("\n".join(width))
print("\n## Harness overhead\n")
print("While decoding with `ar` (round 1): the per-token work of the `ar` method and the probe outside the "
      "model forward, and its share of the median decode step; end to end, 1 − ar-method ÷ raw-loop tokens/s "
      "over interleaved pairs (noisy on a shared machine).\n")
print("| model | threads | harness µs/token | decode ms/token | harness share | end to end |")
print("|---|---|---|---|---|---|")
print("\n".join(over))
