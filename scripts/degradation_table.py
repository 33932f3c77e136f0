#!/usr/bin/env python3
"""The table of reports/interference/degradation.md from the bench JSON
files scripts/degradation.sh writes.

usage: degradation_table.py DIR ROUNDS CPU MODEL...
"""
import json
import os
import statistics
import sys

BOUND = 2.5  # 2 threads with a core taken, at most this much slower


def speed(path, test):
    rows = json.load(open(path + ".json"))["rows"]
    return next(r["tokens_per_s_mean"] for r in rows if r["test"].startswith(test))


def main():
    tmp, rounds, cpu, models = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
    print("# Gentle degradation: decoding with one of two cores taken\n")
    print(
        f"`scripts/degradation.sh`: {rounds} alternating rounds on {cpu} ({os.cpu_count()} logical cores). "
        "`pdbench bench`: pp32 is one forward over a 32-token prompt, tg32 is 32 one-token decode steps, "
        "2 repetitions after a warm-up; the median over rounds. Busy: `while :; do :; done` for the whole bench. "
        "Pool `candle` is candle's barrier pool, which pdbench's kernels used before (`PDBENCH_POOL=candle`); "
        "`pdbench` is its own pool (src/model/pool.rs). "
        f"The bound: 2 threads with a core taken at most {BOUND}× slower than 2 threads quiet.\n"
    )
    print("| model | threads | pool | test | quiet tokens/s | one core busy tokens/s | slowdown | bound |")
    print("|---|---|---|---|---|---|---|---|")
    for m in models:
        for t, pool in ((1, "pdbench"), (2, "candle"), (2, "pdbench")):
            for test in ("pp", "tg"):
                q = statistics.median(
                    speed(f"{tmp}/{m}-t{t}-{pool}-quiet-r{r}", test) for r in range(1, rounds + 1)
                )
                b = statistics.median(
                    speed(f"{tmp}/{m}-t{t}-{pool}-busy-r{r}", test) for r in range(1, rounds + 1)
                )
                bound = ("met" if q / b <= BOUND else "**not met**") if t == 2 else ""
                label = pool if t == 2 else "–"
                print(f"| {m} | {t} | {label} | {test}32 | {q:.1f} | {b:.1f} | {q / b:.2f}× | {bound} |")

    runs = os.path.join(tmp, "runs")
    if os.path.isdir(runs):
        print(
            "\nEnd to end: `pdbench run --method ar --limit 60` on the toy suite (prefill, decode and the "
            "pauses between samples, in which idle pool workers park); tokens/s over all samples, the median "
            "over rounds.\n"
        )
        print("| threads | pool | quiet tokens/s | one core busy tokens/s | slowdown | bound |")
        print("|---|---|---|---|---|---|")
        for t, pool in ((1, "pdbench"), (2, "candle"), (2, "pdbench")):
            def tps(state, r):
                lines = open(os.path.join(runs, f"run-t{t}-{pool}-{state}-r{r}", "samples.jsonl"))
                s = [json.loads(l) for l in lines]
                return sum(x["new_tokens"] for x in s) / sum(x["wall_ns"] for x in s) * 1e9
            q = statistics.median(tps("quiet", r) for r in range(1, rounds + 1))
            b = statistics.median(tps("busy", r) for r in range(1, rounds + 1))
            bound = ("met" if q / b <= BOUND else "**not met**") if t == 2 else ""
            print(f"| {t} | {pool if t == 2 else '–'} | {q:.0f} | {b:.0f} | {q / b:.2f}× | {bound} |")


if __name__ == "__main__":
    main()
