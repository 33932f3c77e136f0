#!/usr/bin/env python3
"""The chat messages ParallelBench's own code builds for the first rows of each
task (its ParallelBench.__getitem__: prompt.format(**input), then "\\n" -> newline;
in-context examples as earlier user/assistant turns). tests/suites.rs checks
that pdbench builds the same messages.

usage: scripts/parallelbench_reference_messages.py [PARALLELBENCH_DIR] > tests/fixtures/parallelbench_messages.jsonl
needs PyYAML."""
import json, os, sys
import yaml

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/parallelbench"
rows_per_task = 3
for group in sorted(os.listdir(root)):
    cfg_path = os.path.join(root, group, "task_config.yaml")
    if not os.path.isfile(cfg_path):
        continue
    configs = yaml.safe_load(open(cfg_path))
    for task in sorted(configs):
        data = os.path.join(root, task + ".jsonl")
        if not os.path.isfile(data):
            continue
        prompt = configs[task]["prompt"]
        with open(data) as f:
            for index in range(rows_per_task):
                row = json.loads(f.readline())
                messages = []
                for ex in row["input"].get("icl_examples", []):
                    answer = ex["answer"] if isinstance(ex["answer"], str) else ex["answer"]["example"]
                    messages.append({"role": "user", "content": prompt.format(**ex["input"]).replace("\\n", "\n")})
                    messages.append({"role": "assistant", "content": answer})
                messages.append({"role": "user", "content": prompt.format(**row["input"]).replace("\\n", "\n")})
                print(json.dumps({"task": task, "index": index, "metric": configs[task]["metric"],
                                  "messages": messages, "answer": row["answer"]}))
