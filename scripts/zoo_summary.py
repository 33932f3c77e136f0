#!/usr/bin/env python3
"""Summary of a trained toy zoo from its training records (training.json).

usage: zoo_summary.py ROOT [--wall-s S] [--sps-tau T] [--against OTHER_ROOT]

Prints Markdown: per model, the parameters, steps, training and evaluation
wall time, folder size, and the test-split scores at each tokens/step, plus
the closed-form check of the diffusion LM, and each draft head's top-1
agreement with its target. With --against, also compares
each model's scores with the same model in OTHER_ROOT and exits 1 when a
deterministic or random-task score at one token per step differs by more
than 2 points (the issue's reproduction rule).
"""
import argparse
import json
import os
import sys

MODELS = ["toy-target", "toy-draft", "toy-dllm", "toy-bdllm"]
# Draft heads, scored by their agreement with the target; summarised when
# present.
HEADS = ["toy-eagle"]
# Learn2PD filters, scored against their diffusion LM's baseline.
FILTERS = ["toy-learn2pd"]


def load(root, name):
    with open(os.path.join(root, name, "training.json")) as f:
        return json.load(f)


def size_mb(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        if "checkpoint" in dirpath:
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total / 1e6


def params(n):
    return f"{n / 1e6:.2f} M" if n >= 10_000 else f"{n / 1e3:.1f} k"


def pct(x):
    return "–" if x is None else f"{x:.1f}%"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("root")
    ap.add_argument("--wall-s", type=float)
    ap.add_argument("--sps-tau", type=float)
    ap.add_argument("--against")
    a = ap.parse_args()

    recs = {m: load(a.root, m) for m in MODELS}
    # Later additions, summarised when present.
    for m in ["toy-cllm", "toy-deer", "toy-tidar"]:
        if os.path.isfile(os.path.join(a.root, m, "training.json")):
            recs[m] = load(a.root, m)
    heads = {h: load(a.root, h) for h in HEADS if os.path.isfile(os.path.join(a.root, h, "training.json"))}
    filters = {f: load(a.root, f) for f in FILTERS if os.path.isfile(os.path.join(a.root, f, "training.json"))}
    print("| model | objective | parameters | steps | training | evaluation | size |")
    print("|---|---|---|---|---|---|---|")
    for m, r in {**recs, **heads, **filters}.items():
        print(
            f"| `{m}` | {r['recipe']['objective']} | {params(r['parameters'])} | {r['steps_done']} "
            f"| {r['wall_s'] / 60:.1f} min | {r.get('eval_wall_s', 0) / 60:.1f} min "
            f"| {size_mb(os.path.join(a.root, m)):.2f} MB |"
        )
    total_mb = sum(size_mb(os.path.join(a.root, m)) for m in [*recs, *heads, *filters])
    base_s = sum(recs[m]["wall_s"] + recs[m].get("eval_wall_s", 0) for m in MODELS)
    print()
    print(f"The four base models ({', '.join(MODELS)}): {base_s / 60:.1f} min of training and evaluation.")
    if a.wall_s is not None:
        print(f"Whole zoo: {a.wall_s / 60:.1f} min wall time (training and evaluation), {total_mb:.1f} MB.")
    else:
        print(f"Whole zoo: {total_mb:.1f} MB.")
    if a.sps_tau is not None:
        print(f"`toy-draft` as `sps`'s drafter at draft length 4 on the toy suite: τ = {a.sps_tau:.2f} tokens per target forward.")
    for m, r in recs.items():
        j = r.get("jacobi_evaluation")
        if j:
            print(
                f"`{m}`: Jacobi decoding (window {j['window']}) on the test split makes "
                f"{j['tokens_per_forward']:.2f} tokens per forward, against {j['init_tokens_per_forward']:.2f} "
                f"for the model it was adapted from."
            )
    for m, r in recs.items():
        d = r.get("deer_evaluation")
        if d:
            print()
            print(f"`{m}`: greedy DEER on the test split ({d['items']} items), the drafter before and after alignment:")
            print()
            print("| drafter | block | tokens per target forward | mean accepted drafts |")
            print("|---|---|---|---|")
            for row in d["rows"]:
                print(
                    f"| {row['drafter']} | {row['block_len']} | {row['tokens_per_target_forward']:.2f} "
                    f"| {row['mean_accepted']:.2f} |"
                )
            print()
    for h, r in heads.items():
        e = r["head_evaluation"]
        print(
            f"`{h}`: its top-1 draft agrees with the target's greedy token at {e['top1_agreement_pct']:.1f}% "
            f"of {e['positions']} test-split answer positions (teacher-forced)."
        )
    for f, r in filters.items():
        e = r["filter_evaluation"]
        print(
            f"`{f}`: on replayed baseline steps of the test split it accepts {e['recall_pct']:.1f}% of the positions "
            f"whose argmax is final and {e['false_accept_pct']:.1f}% of those whose argmax is not."
        )
        print()
        print("| decoder | deterministic | random | forwards per item |")
        print("|---|---|---|---|")
        for row in e["rows"]:
            print(
                f"| {row['decoder']} | {pct(row['deterministic'])} | {pct(row['random'])} "
                f"| {row['forwards_per_item']:.1f} |"
            )
    print()
    print("Test split (20 items per task), deterministic tasks exact / random tasks valid, by tokens per step:")
    print()
    print("| model | tokens/step | deterministic | random | tokens per forward |")
    print("|---|---|---|---|---|")
    for m, r in recs.items():
        for e in r["evaluation"]:
            print(
                f"| `{m}` | {e['tokens_per_step']} | {pct(e['deterministic'])} | {pct(e['random'])} "
                f"| {e['tokens_per_forward']:.2f} |"
            )
    tasks = sorted(recs["toy-dllm"]["evaluation"][0]["per_task"])
    print()
    print("`toy-dllm` per task (greedy, confidence order), by tokens per step:")
    print()
    ks = [e["tokens_per_step"] for e in recs["toy-dllm"]["evaluation"]]
    print("| task | " + " | ".join(str(k) for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for t in tasks:
        vals = [e["per_task"].get(t) for e in recs["toy-dllm"]["evaluation"]]
        print(f"| {t} | " + " | ".join("–" if v is None else f"{v:.0f}" for v in vals) + " |")
    for m, r in recs.items():
        for c in r.get("closed_form_checks", []):
            print()
            print(
                f"`{m}`, {c['task']} of {c['list_len']} names, all {c['tokens_per_step']} positions in one step, "
                f"sampled at temperature {c['temperature']:g}: {c['valid_pct']:.1f}% valid over {c['items']} items "
                f"(closed form {c['closed_form_pct']:.1f}%)."
            )

    if a.against:
        bad = []
        print()
        print(f"Against {a.against} (one token per step):")
        print()
        print("| model | deterministic | random | Δ |")
        print("|---|---|---|---|")
        for m, r in recs.items():
            if not os.path.isfile(os.path.join(a.against, m, "training.json")):
                continue
            o = load(a.against, m)
            if not r["evaluation"]:
                # DEER drafters: the aligned drafter's tokens per target forward.
                x = [w for w in r["deer_evaluation"]["rows"] if w["drafter"] == "aligned"][-1]
                y = [w for w in o["deer_evaluation"]["rows"] if w["drafter"] == "aligned"][-1]
                print(
                    f"| `{m}` (DEER, block {x['block_len']}) | {x['tokens_per_target_forward']:.2f} vs "
                    f"{y['tokens_per_target_forward']:.2f} tokens per target forward | | |"
                )
                continue
            e, f = r["evaluation"][0], o["evaluation"][0]
            deltas = [
                abs(x - y)
                for x, y in [(e["deterministic"], f["deterministic"]), (e["random"], f["random"])]
                if x is not None and y is not None
            ]
            worst = max(deltas) if deltas else 0.0
            print(
                f"| `{m}` | {pct(e['deterministic'])} vs {pct(f['deterministic'])} "
                f"| {pct(e['random'])} vs {pct(f['random'])} | {worst:.1f} |"
            )
            if worst > 2.0:
                bad.append(m)
        for h, r in heads.items():
            o = load(a.against, h)
            x, y = r["head_evaluation"]["top1_agreement_pct"], o["head_evaluation"]["top1_agreement_pct"]
            print(f"| `{h}` | top-1 agreement {x:.1f}% vs {y:.1f}% | | {abs(x - y):.1f} |")
            if abs(x - y) > 2.0:
                bad.append(h)
        for f, r in filters.items():
            if not os.path.isfile(os.path.join(a.against, f, "training.json")):
                continue
            o = load(a.against, f)
            x = [row for row in r["filter_evaluation"]["rows"] if row["decoder"] == "learn2pd"][0]
            y = [row for row in o["filter_evaluation"]["rows"] if row["decoder"] == "learn2pd"][0]
            deltas = [
                abs(p - q)
                for p, q in [(x["deterministic"], y["deterministic"]), (x["random"], y["random"])]
                if p is not None and q is not None
            ]
            worst = max(deltas) if deltas else 0.0
            print(
                f"| `{f}` (learn2pd decoding) | {pct(x['deterministic'])} vs {pct(y['deterministic'])} "
                f"| {pct(x['random'])} vs {pct(y['random'])} | {worst:.1f} |"
            )
            if worst > 2.0:
                bad.append(f)
        if bad:
            print(f"\nNot reproduced within 2 points: {', '.join(bad)}")
            sys.exit(1)


if __name__ == "__main__":
    main()
