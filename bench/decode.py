"""Decode throughput: tokens/s at batch 1 and 8 (prefill 128, 256 new tokens), ours vs llama.cpp.

    python bench/decode.py [--preset minimind2-small] [--dtypes fp32,bf16,fp32+int8,bf16+int8] [--no-llama]

Random weights (speed does not depend on them), the built-in corpus's tokenizer. Greedy decoding with `min` new tokens forced (stop
tokens disabled), so every row produces exactly 256 tokens. The llama.cpp column runs the same
weights exported to GGUF (f32, f16, q8_0) through llama-cpp-python, when that package is installed
(prefill untimed, then greedy sampling of 256 tokens, same thread count).
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
from bench.train import corpus  # noqa: E402
from minimind.infer.generate import Generator, SamplingParams  # noqa: E402
from minimind.infer.quant import apply_quantization  # noqa: E402
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


def llama_cpp(model, tok, dtype: str) -> float | None:
    """Batch-1 greedy decode tokens/s of llama.cpp on the same weights (GGUF `dtype`), or None."""
    try:
        import llama_cpp
    except ImportError:
        return None
    from minimind.checkpoint import save_checkpoint
    from minimind.export.gguf import export_gguf

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_checkpoint(d / "ckpt", model.float(), tok)
        export_gguf(d / "ckpt", d / "m.gguf", dtype=dtype)
        llm = llama_cpp.Llama(str(d / "m.gguf"), n_ctx=PREFILL + NEW + 8, n_threads=torch.get_num_threads(),
                              n_threads_batch=torch.get_num_threads(), n_batch=PREFILL, verbose=False)
        g = torch.Generator().manual_seed(1)
        prompt = torch.randint(16, model.config.vocab_size, (PREFILL,), generator=g).tolist()

        def run(n: int) -> float:
            llm.reset()
            llm.eval(prompt)  # prefill, not timed
            t = time.perf_counter()
            it = llm.generate([], top_k=1, temp=0.0, reset=False)  # greedy, continues after the prompt
            for _, _ in zip(range(n), it):
                pass
            return n / (time.perf_counter() - t)

        run(8)  # warm up
        return run(NEW)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--dtypes", default="fp32,bf16,fp32+int8,bf16+int8",
                    help="comma list of DTYPE[+int8] (int8: int8 weights, see minimind/infer/quant.py)")
    ap.add_argument("--no-llama", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    rows = []
    _, tok = corpus()  # a real tokenizer, so the GGUF export carries a matching vocabulary
    base = MiniMindForCausalLM(get_preset(args.preset, vocab_size=tok.vocab_size)).eval()
    for name in args.dtypes.split(","):
        dt_name, _, quant = name.partition("+")
        dt = {"fp32": torch.float32, "bf16": torch.bfloat16}[dt_name]
        m = MiniMindForCausalLM(base.config).eval()
        m.load_state_dict(base.state_dict())
        m = apply_quantization(m.to(dt), quant or "none")
        b1, b8 = ours(m, 1), ours(m, 8)
        rows.append({"engine": "minimind", "dtype": name, "batch1 tok/s": b1, "batch8 tok/s": b8,
                     "b8/b1": b8 / b1})
        print(rows[-1], flush=True)
    if not args.no_llama:
        for dtype in ("f32", "f16", "q8_0"):
            r = llama_cpp(base, tok, dtype)
            if r is None:
                print("llama.cpp column skipped: llama-cpp-python is not installed (pip install llama-cpp-python)")
                break
            rows.append({"engine": "llama.cpp", "dtype": dtype, "batch1 tok/s": r})
            print(rows[-1], flush=True)
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
