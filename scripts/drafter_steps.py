#!/usr/bin/env python3
"""Per-step figures of draft-then-verify runs, from their samples.jsonl:
decode steps, drafts the verifier accepted per step (before the stop rule
cuts at EOS), tokens per step and verified width per step, per method.

usage: drafter_steps.py RUN_DIR...
"""
import json
import sys

print("| run | method | decode steps | accepted drafts per step | tokens per step | verified width per step |")
print("|---|---|---|---|---|---|")
for run in sys.argv[1:]:
    by = {}
    with open(f"{run}/samples.jsonl") as f:
        for line in f:
            s = json.loads(line)
            by.setdefault(s["method"], []).extend(st for st in s["steps"] if st["kind"] == "decode")
    for m, steps in by.items():
        n = len(steps)
        if n == 0:
            continue
        mean = lambda k, add=0: sum(st[k] + add for st in steps) / n
        print(f"| {run.rstrip('/').split('/')[-1]} | {m} | {n} | {mean('accepted'):.2f} | {mean('accepted', 1):.2f} | {mean('verify_width'):.2f} |")
