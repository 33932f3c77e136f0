#!/usr/bin/env python3
"""Where a drafting method's decode steps spend their time, from a run's
step records: the first decode step of each sample (where `sps` reads the
prompt into its drafter) apart from the later ones. The figures of
reports/cpu-sps-pair/README.md.

usage: scripts/step_costs.py RUN_DIR [METHOD...]   (default: every method with draft times)
"""
import json
import sys
from collections import defaultdict

run, wanted = sys.argv[1], set(sys.argv[2:])
first, later, verify = defaultdict(list), defaultdict(list), defaultdict(list)
for line in open(f"{run}/samples.jsonl"):
    s = json.loads(line)
    m = s["method"]
    steps = [x for x in s["steps"] if x["kind"] == "decode" and x.get("draft_ns") is not None]
    if not steps or (wanted and m not in wanted):
        continue
    first[m].append(steps[0]["draft_ns"] / 1e6)
    for x in steps[1:]:
        later[m].append(x["draft_ns"] / 1e6)
        verify[m].append((x["t_ns"] - x["draft_ns"]) / 1e6)

mean = lambda v: sum(v) / len(v) if v else float("nan")
print("| method | first-step draft ms | later draft ms | later verify ms | steps |")
print("|---|---|---|---|---|")
for m in sorted(first):
    n = len(first[m]) + len(later[m])
    print(f"| {m} | {mean(first[m]):.1f} | {mean(later[m]):.1f} | {mean(verify[m]):.1f} | {n} |")
