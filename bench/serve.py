"""Serving throughput: 16 concurrent streaming clients vs one, against a real `minimind serve` process.

    python bench/serve.py [--preset minimind2-small] [--clients 16] [--tokens 128] [--compile on]

A minimind2-small-shaped model (random weights whose output rows for the special tokens are zeroed,
so every reply runs to max_tokens) is served on loopback. 16 different prompts are streamed with
greedy decoding, first one at a time (the one-client throughput), then all at once; the aggregate
tokens/s of the concurrent run divided by the one-client tokens/s is the batching gain (target
>= 4), and every concurrent stream must equal its solo stream. Writes bench/serve.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peak import print_table, write_json  # noqa: E402
from bench.train import corpus  # noqa: E402
from minimind.checkpoint import save_checkpoint  # noqa: E402
from minimind.config import get_preset  # noqa: E402
from minimind.model import MiniMindForCausalLM  # noqa: E402
from minimind.runtime import machine_info  # noqa: E402


def start(ckpt: Path, compile_: str) -> tuple[subprocess.Popen, int]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "minimind.cli", "serve", str(ckpt), "--port", "0",
                             "--compile", compile_, "--max-batch", "16"],
                            env=env, stderr=subprocess.PIPE, text=True)
    log = []
    while True:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise SystemExit("server failed:\n" + "".join(log))
        log.append(line)
        m = re.search(r"running on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, int(m.group(1))


async def stream(client, prompt: str, tokens: int) -> str:
    s = await client.chat.completions.create(model="minimind", messages=[{"role": "user", "content": prompt}],
                                             stream=True, max_tokens=tokens, temperature=0)
    return "".join([c.choices[0].delta.content or "" async for c in s if c.choices])


async def run(port: int, prompts: list[str], tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600)
    await stream(client, "warm up", 8)
    t = time.perf_counter()
    solo = [await stream(client, p, tokens) for p in prompts]
    t_solo = time.perf_counter() - t
    t = time.perf_counter()
    together = await asyncio.gather(*(stream(client, p, tokens) for p in prompts))
    t_together = time.perf_counter() - t
    n = len(prompts) * tokens
    return {"one client tok/s": n / t_solo, f"{len(prompts)} clients tok/s": n / t_together,
            "ratio": t_solo / t_together, "identical": sum(a == b for a, b in zip(solo, together))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--compile", default="on", choices=["on", "off"])
    args = ap.parse_args()
    _, tok = corpus()
    torch.manual_seed(0)
    model = MiniMindForCausalLM(get_preset(args.preset, vocab_size=tok.vocab_size, max_position_embeddings=2048))
    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie, then silence
        model.lm_head.weight[:16] = 0  # the special tokens: replies never end early
        model.config.tie_word_embeddings = False
    prompts = [f"Question {i}: tell me about " + "the sea and the sky " * (i % 5) for i in range(args.clients)]
    info = machine_info()
    with tempfile.TemporaryDirectory() as d:
        ckpt = save_checkpoint(Path(d) / "ckpt", model, tok)
        t = time.perf_counter()
        proc, port = start(ckpt, args.compile)
        startup = time.perf_counter() - t
        try:
            r = asyncio.run(run(port, prompts, args.tokens))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    row = {"preset": args.preset, "compile": args.compile, "tokens/request": args.tokens, **r,
           "startup s": startup}
    write_json("serve", {"machine": info, "row": row})
    print(f"\nserve {args.preset}, {info['cpu']} ({' '.join(info['flags'])}), {info['threads']} threads, "
          f"torch {info['torch']}")
    print_table([row], list(row))
    print(f"{args.clients} concurrent streams / one client = {r['ratio']:.2f}x (target >= 4); "
          f"{r['identical']}/{args.clients} streams identical to their solo run")


if __name__ == "__main__":
    main()
