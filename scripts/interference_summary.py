#!/usr/bin/env python3
"""Tables for reports/interference from the runs' report.csv files and
compare's verdicts (written by scripts/interference.sh).

usage: interference_summary.py DIR
"""
import csv
import json
import math
import os
import sys

TOLERANCE = 0.15  # the acceptance bound on a speedup's change


def threshold():
    """pdbench's DISTURBED_PCT, read from its source."""
    import re
    src = open(os.path.join(os.path.dirname(__file__), "..", "src", "measure", "interference.rs")).read()
    return float(re.search(r"pub const DISTURBED_PCT: f64 = ([0-9.]+);", src).group(1))


def overall(path):
    rows = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            if r["category"] == "all":
                rows[r["method"]] = r
    return rows


def num(x):
    try:
        v = float(x)
        return v if math.isfinite(v) else None
    except (TypeError, ValueError):
        return None


def main():
    out = sys.argv[1]
    runs = sorted(d for d in os.listdir(out) if os.path.isfile(os.path.join(out, d, "report.csv")))
    data = {r: overall(os.path.join(out, r, "report.csv")) for r in runs}
    manifests = {r: json.load(open(os.path.join(out, r, "manifest.json"))) for r in runs}
    verdicts = {}
    if os.path.exists(os.path.join(out, "compare.tsv")):
        for line in open(os.path.join(out, "compare.tsv")):
            parts = line.rstrip("\n").split("\t")
            verdicts[parts[0]] = (int(parts[1]), parts[2] if len(parts) > 2 else "")

    print("# Interference experiment: tables\n")
    for r in runs:
        m = manifests[r]
        tc = m.get("threads_choice") or {}
        print(f"- `{r}`: {m['device']['threads']} thread(s) ({tc.get('how', 'given')}), order {m.get('order', 'method')}, status {m['status']}")
    for order in ["interleaved", "method"]:
        quiet = [f"quiet-{i}-{order}" for i in (1, 2, 3) if f"quiet-{i}-{order}" in data]
        if not quiet:
            continue
        cols = quiet + [f"{k}-{order}" for k in ("start", "throughout") if f"{k}-{order}" in data]
        methods = [m for m in data[quiet[0]] if m != "ar"]
        print(f"\n## Order `{order}`: speedup over ar (geometric mean over prompts)\n")
        print("| method | " + " | ".join(cols) + " | start vs quiet-1 | throughout vs quiet-1 |")
        print("|---|" + "---|" * (len(cols) + 2))
        for meth in methods:
            cells = []
            for c in cols:
                s = num(data[c].get(meth, {}).get("speedup_vs_ar"))
                cells.append("–" if s is None else f"{s:.2f}×")
            rel = []
            q = num(data[quiet[0]][meth].get("speedup_vs_ar"))
            for k in ("start", "throughout"):
                c = f"{k}-{order}"
                s = num(data.get(c, {}).get(meth, {}).get("speedup_vs_ar"))
                if q and s:
                    d = s / q - 1
                    rel.append(f"{100 * d:+.0f}%{'' if abs(d) <= TOLERANCE else ' (>15%)'}")
                else:
                    rel.append("–")
            print(f"| {meth} | " + " | ".join(cells) + " | " + " | ".join(rel) + " |")
        print(f"\n## Order `{order}`: thread time lost to the host (the meter), per method\n")
        print("| method | " + " | ".join(cols) + " |")
        print("|---|" + "---|" * len(cols))
        for meth in data[quiet[0]]:
            cells = []
            for c in cols:
                v = num(data[c].get(meth, {}).get("interference_pct"))
                cells.append("–" if v is None else f"{v:.2f}%")
            print(f"| {meth} | " + " | ".join(cells) + " |")
        print(f"\n## Order `{order}`: acceptance\n")
        print("| run | largest speedup change vs quiet-1 | largest meter figure | flagged (> {:g}%) | compare vs quiet-1 (exit) | verdict |".format(threshold()))
        print("|---|---|---|---|---|---|")
        for c in cols[1:]:
            worst = 0.0
            for meth in methods:
                q = num(data[quiet[0]][meth].get("speedup_vs_ar"))
                s = num(data[c].get(meth, {}).get("speedup_vs_ar"))
                if q and s:
                    worst = max(worst, abs(s / q - 1))
            meter = max((num(r.get("interference_pct")) or 0.0) for r in data[c].values())
            code, why = verdicts.get(c, (None, ""))
            refused = code == 2
            reason = (
                "host interference" if "host interference" in why
                else "thread counts differ" if "threads" in why
                else why[:80]
            )
            ok = worst <= TOLERANCE or refused or c.startswith("quiet")
            verdict = (
                f"quiet: the spread between quiet runs" if c.startswith("quiet")
                else "within 15%" if worst <= TOLERANCE
                else f"refused by compare ({reason})" if refused
                else "**confident wrong answer**"
            )
            flagged = "yes" if meter > threshold() else "no"
            print(f"| `{c}` | {100 * worst:.0f}% | {meter:.2f}% | {flagged} | {code} | {verdict} |")
            if not ok:
                print(f"\nFAIL: `{c}` moved a speedup by {100 * worst:.0f}% and compare did not refuse it ({why})", file=sys.stderr)


if __name__ == "__main__":
    main()
