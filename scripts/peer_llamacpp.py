#!/usr/bin/env python3
"""Measure llama.cpp (through llama-cpp-python) on the same GGUF files and
the same tests as `pdbench bench`: pp = one batch of N prompt tokens from an
empty context, tg = N single-token decode steps. Prints JSON.

usage: peer_llamacpp.py --model PATH --threads 1,2 --prefill 64 --decode 128 --repeats 5
"""
import argparse, json, random, statistics, sys, time

import llama_cpp


def measure(path, threads, n_prefill, n_decode, repeats):
    llm = llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=threads, n_threads_batch=threads,
                          n_batch=512, logits_all=False, verbose=False)
    vocab = llm.n_vocab()
    rng = random.Random(1234)
    prompt = [rng.randrange(100, max(200, vocab - 1000)) for _ in range(n_prefill)]
    rows = []
    for test, fn in (("pp%d" % n_prefill, lambda: run_pp(llm, prompt)),
                     ("tg%d" % n_decode, lambda: run_tg(llm, prompt[0], n_decode))):
        samples = []
        for i in range(repeats + 1):
            t = fn()
            if i > 0:
                samples.append(t)
        n = n_prefill if test.startswith("pp") else n_decode
        tps = [n / s for s in samples]
        rows.append({"threads": threads, "test": test, "tokens": n,
                     "tokens_per_s_mean": statistics.mean(tps),
                     "tokens_per_s_sd": statistics.stdev(tps) if len(tps) > 1 else None,
                     "tokens_per_s_all": tps})
    return rows


def run_pp(llm, prompt):
    llm.reset()
    llm._ctx.kv_cache_clear()
    t0 = time.perf_counter()
    llm.eval(prompt)
    return time.perf_counter() - t0


def run_tg(llm, first, n):
    llm.reset()
    llm._ctx.kv_cache_clear()
    tok = first
    t0 = time.perf_counter()
    for _ in range(n):
        llm.eval([tok])
        logits = llm._scores[llm.n_tokens - 1] if llm._logits_all else llm.scores[llm.n_tokens - 1]
        tok = int(logits.argmax())
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", action="append", required=True)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prefill", type=int, default=64)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    out = {"peer": "llama.cpp via llama-cpp-python " + llama_cpp.__version__, "rows": []}
    for path in a.model:
        for t in [int(x) for x in a.threads.split(",")]:
            for r in measure(path, t, a.prefill, a.decode, a.repeats):
                r["model_path"] = path
                out["rows"].append(r)
                sd = "" if r["tokens_per_s_sd"] is None else f" ± {r['tokens_per_s_sd']:.1f}"
                print(f"{path} t={t} {r['test']}: {r['tokens_per_s_mean']:.1f}{sd} tokens/s",
                      file=sys.stderr)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
