#!/usr/bin/env python3
"""Writes suites/parallelbench/<group>/<task>.toml for every ParallelBench task
whose metric pdbench implements, from the released task_config.yaml files.

usage: scripts/gen-parallelbench-suites.py [PARALLELBENCH_DIR]  (default ../shared/parallelbench)
pdbench checks at load time that each suite's scorer is the task's metric."""
import os, re, sys

root = sys.argv[1] if len(sys.argv) > 1 else "../shared/parallelbench"
implemented = {"list_match_score", "list_shuffle_score", "list_random_insert_score",
               "list_random_remove_score", "list_random_replace_score",
               "latin_square_score", "sudoku_score", "sentence_to_words_score",
               "summary_score", "paraphrase_score"}
here = os.path.dirname(os.path.abspath(__file__))
out_root = os.path.join(here, "..", "suites", "parallelbench")
written = 0
for group in sorted(os.listdir(root)):
    cfg = os.path.join(root, group, "task_config.yaml")
    if not os.path.isfile(cfg):
        continue
    # Top-level keys are `group/task:`; each has an indented `metric:` line.
    task, metrics = None, {}
    for line in open(cfg):
        m = re.match(r"^([\w\-]+/[\w\-]+):\s*$", line)
        if m:
            task = m.group(1)
        m = re.match(r"^  metric: (\S+)", line)
        if m and task:
            metrics[task] = m.group(1)
    for task, metric in sorted(metrics.items()):
        if metric not in implemented or not os.path.isfile(os.path.join(root, task + ".jsonl")):
            continue
        group_name = task.split("/")[0]
        max_new = {"waiting_line": 32, "waiting_line_n15": 128}.get(group_name, 64)
        stop = "\\n\\n\\n" if group_name == "puzzle" else "\\n\\n"
        has_icl = "icl_examples" in open(os.path.join(root, task + ".jsonl")).readline()
        icl_note = "in-context examples as an earlier turn" if has_icl else "no in-context examples"
        path = os.path.join(out_root, task + ".toml")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"""# ParallelBench {task}: the released test rows, the prompt and metric of
# {group_name}/task_config.yaml, {icl_note}.
# Written by scripts/gen-parallelbench-suites.py.
name = "parallelbench/{task}"
version = "1"
description = "ParallelBench {task} ({metric})"
source = {{ parallelbench = "{task}" }}
prompt_template = "parallelbench"
chat_template = "model"
icl = "earlier-turn"
max_new_tokens = {max_new}
stop = ["{stop}"]
reference_field = "answer"
scorer = "{metric}"
""")
        written += 1
print(f"wrote {written} suites under {os.path.relpath(out_root)}")
