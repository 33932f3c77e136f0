#!/usr/bin/env python3
"""PyTorch/transformers eager decode speed on a hub-layout model, the peer
figure for `pdbench bench`'s tg test on the GPU machine (issue 8).

Greedy decode with transformers' KV cache, one token per forward, after a
prompt of random in-vocabulary ids (the same recipe as pdbench bench:
away from the special ids at either end). The device is synchronised
before every clock read; one warm-up repetition is not recorded.

usage: scripts/torch_decode.py MODEL_DIR [--device cuda] [--prefill 16]
           [--decode 32] [--repeats 5] [--dtype float32] [--out FILE.json]

scripts/gpu-run.sh calls it where torch imports (PYTHON names the
interpreter). Its dry run on the build machine's CPU has run it with torch
2.15.0 and transformers 5.25.0 on the toy target and the SmolLM2 export.
"""
import argparse
import json
import random
import statistics
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prefill", type=int, default=16)
    ap.add_argument("--decode", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out")
    a = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, a.dtype)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype).to(a.device).eval()
    vocab = model.config.vocab_size
    lo = min(vocab // 10, 100)
    hi = max(vocab - min(vocab // 10, 1000), lo + 1)
    rng = random.Random(0)
    prompt = torch.tensor([[rng.randrange(lo, hi) for _ in range(a.prefill)]], device=a.device)

    def sync():
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()

    @torch.inference_mode()
    def decode_once():
        out = model(prompt, use_cache=True)
        past = out.past_key_values
        nxt = out.logits[:, -1:].argmax(-1)
        sync()
        t0 = time.perf_counter()
        for _ in range(a.decode):
            out = model(nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        sync()
        return a.decode / (time.perf_counter() - t0)

    decode_once()  # warm-up, not recorded
    tps = [decode_once() for _ in range(a.repeats)]
    row = {
        "peer": "pytorch-transformers-eager",
        "torch": torch.__version__,
        "model": a.model,
        "device": a.device,
        "dtype": a.dtype,
        "test": f"tg{a.decode} after pp{a.prefill}",
        "tokens_per_s_mean": statistics.mean(tps),
        "tokens_per_s_sd": statistics.stdev(tps) if len(tps) > 1 else None,
        "tokens_per_s_all": tps,
    }
    text = json.dumps(row, indent=2)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
