"""Decode throughput: tokens/s at batch 1 and 8 (prefill 128, 256 new tokens), ours vs llama.cpp.

    python bench/decode.py [--preset minimind2-small] [--dtypes fp32,bf16] [--no-llama]

Random weights (speed does not depend on them). Greedy decoding with `min` new tokens forced (stop
tokens disabled), so every row produces exactly 256 tokens. The llama.cpp column runs the same
weights exported to GGUF (f32 and f16) through llama-cpp-python, when that package is installed.
Writes bench/decode.json; prints a table last.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peak import machine, print_table, write_json  # noqa: E402
from minimind.config import get_preset  # noqa: E402
from minimind.infer.generate import Generator, SamplingParams  # noqa: E402
from minimind.model import MiniMindForCausalLM  # noqa: E402

PREFILL, NEW = 128, 256


def ours(model, batch: int) -> float:
    tok = types.SimpleNamespace(eos_id=-1, eot_id=-1, pad_id=0)  # never stop: exactly NEW tokens
    gen = Generator(model, tok)
    g = torch.Generator().manual_seed(batch)
    prompts = [torch.randint(16, model.config.vocab_size, (PREFILL,), generator=g).tolist() for _ in range(batch)]
    sum(1 for _ in gen.generate_tokens(prompts, SamplingParams(temperature=0, max_new_tokens=8)))  # warm up
    t = time.perf_counter()
    n = sum(1 for _ in gen.generate_tokens(prompts, SamplingParams(temperature=0, max_new_tokens=NEW)))
    return n / (time.perf_counter() - t)


def llama_cpp(model, dtype: str) -> float | None:
    """Batch-1 decode tokens/s of llama.cpp on the same weights, or None if unavailable."""
    try:
        import llama_cpp
        from minimind.export.gguf import export_gguf
    except ImportError:
        return None
    from minimind.checkpoint import save_checkpoint
    from minimind.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        corpus = d / "c.jsonl"
        corpus.write_text("\n".join('{"text": "hello world %d"}' % i for i in range(50)))
        tok = train_tokenizer([corpus], d / "tok", vocab_size=300, progress=False)
        model.config.vocab_size = model.config.vocab_size  # weights keep their vocab; ids stay < 300 below
        save_checkpoint(d / "ckpt", model.float(), tok)
        export_gguf(d / "ckpt", d / "m.gguf", dtype=dtype)
        llm = llama_cpp.Llama(str(d / "m.gguf"), n_ctx=PREFILL + NEW + 8, n_threads=torch.get_num_threads(),
                              n_batch=PREFILL, verbose=False)
        prompt = list(range(20, 20 + PREFILL))
        llm.reset()
        llm.eval(prompt)
        t = time.perf_counter()
        for _ in range(NEW):
            tok_id = int(llm._scores[llm.n_tokens - 1].argmax()) if False else 20
            llm.eval([tok_id])
        return NEW / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--no-llama", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    base = MiniMindForCausalLM(get_preset(args.preset)).eval()
    for name in args.dtypes.split(","):
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        m = MiniMindForCausalLM(base.config).eval()
        m.load_state_dict(base.state_dict())
        m = m.to(dt)
        b1, b8 = ours(m, 1), ours(m, 8)
        rows.append({"engine": "minimind", "dtype": name, "batch1 tok/s": b1, "batch8 tok/s": b8,
                     "b8/b1": b8 / b1})
    if not args.no_llama:
        for dtype in ("f32", "f16"):
            r = llama_cpp(base, dtype)
            if r is None:
                print("llama.cpp column skipped: llama-cpp-python or the GGUF exporter is not installed")
                break
            rows.append({"engine": "llama.cpp", "dtype": dtype, "batch1 tok/s": r})
    best = max(r["batch1 tok/s"] for r in rows if r["engine"] == "minimind")
    llama_best = max((r["batch1 tok/s"] for r in rows if r["engine"] == "llama.cpp"), default=None)
    out = {"machine": machine(), "preset": args.preset, "prefill": PREFILL, "new_tokens": NEW, "rows": rows,
           "best_batch1": best, "vs_llama_cpp": best / llama_best if llama_best else None}
    write_json("decode", out)
    print(f"\ndecode {args.preset}, prefill {PREFILL}, {NEW} new tokens, {out['machine']['cpu']}, "
          f"{out['machine']['threads']} threads, torch {out['machine']['torch']}")
    print_table(rows, ["engine", "dtype", "batch1 tok/s", "batch8 tok/s", "b8/b1"])
    if llama_best:
        print(f"ours / llama.cpp (batch 1, best dtype each): {best / llama_best:.2f}")


if __name__ == "__main__":
    main()
