"""Decode and prefill throughput of the generation engine vs llama.cpp, on the reference MiniMind shape.

    python bench/decode.py [--new 128] [--formats auto,fp32,bf16,int8] [--llama-formats f32,f16,q8_0] [--no-llama]

The model is the reference MiniMind small shape built in our code (hidden 512, 8 layers, 8/2 heads,
MLP 1664, vocabulary 6400 of the built-in corpus's tokenizer: 29.0M parameters), random weights
(speed does not depend on them). For each decode weight format (infer/decode.py; prefill runs in
the dtype this machine multiplies fastest) the engine generates `--new` greedy tokens after a
prompt of 16 and of 128 tokens, batch 1 and batch 8 (aggregate tokens/s), with stop tokens
disabled so every row runs to the end:

    decode tok/s    = rows * (new - 1) / (time(generate new) - time(generate 1))
    prefill tok/s   = rows * prompt / time(generate 1)        (prompts are prefilled one by one)

llama.cpp (llama-cpp-python, when installed) runs the same weights exported to GGUF (f32, f16,
q8_0), batch 1, the same thread count: prefill = llm.eval(prompt), then greedy sampling. Each
measurement is time-bounded: a format slower than --budget seconds for its run is cut short.
Writes bench/decode.json and prints the table and the target ratios last.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peak import print_table, write_json  # noqa: E402
from bench.train import corpus  # noqa: E402
from minimind.config import get_preset  # noqa: E402
from minimind.infer.decode import inference_dtype  # noqa: E402
from minimind.infer.engine import Engine, SamplingParams  # noqa: E402
from minimind.model import MiniMindForCausalLM  # noqa: E402
from minimind.runtime import machine_info  # noqa: E402

PROMPTS, BATCHES = (16, 128), (1, 8)


def reference_model(vocab_size: int) -> MiniMindForCausalLM:
    """The reference MiniMind small shape (29.0M with a 6400 vocabulary)."""
    torch.manual_seed(0)
    cfg = get_preset("minimind2-small", vocab_size=vocab_size, intermediate_size=1664, max_position_embeddings=2048)
    return MiniMindForCausalLM(cfg).eval()


def prompts(vocab: int, length: int, batch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(length * 100 + batch)
    return [torch.randint(16, vocab, (length,), generator=g).tolist() for _ in range(batch)]


def ours(engine: Engine, length: int, batch: int, new: int, budget: float) -> dict:
    ps = prompts(engine.config.vocab_size, length, batch)
    greedy = lambda n: SamplingParams(temperature=0, max_new_tokens=n)  # noqa: E731
    engine.generate(ps, greedy(4))  # warm up (shapes, allocator)
    t = time.perf_counter()
    engine.generate(ps, greedy(1))
    t1 = time.perf_counter() - t
    t = time.perf_counter()
    engine.generate(ps, greedy(9))
    per_token = (time.perf_counter() - t - t1) / 8
    new = max(9, min(new, int(budget / max(per_token, 1e-6))))  # time-bounded
    t = time.perf_counter()
    engine.generate(ps, greedy(new))
    tn = time.perf_counter() - t
    return {"decode tok/s": batch * (new - 1) / (tn - t1), "prefill tok/s": batch * length / t1, "new": new}


def llama_cpp(model, tok, dtype: str, length: int, new: int) -> dict | None:
    """Batch-1 llama.cpp on the same weights (GGUF `dtype`), or None without llama-cpp-python.

    Runs in a child process: the AMX build of llama.cpp crashed (SIGSEGV) on q8_0 weights on a
    Sapphire Rapids host; a crash is retried without llama.cpp's repacked "extra" buffers (its
    AMX/repack kernels), and the row says so."""
    import multiprocessing as mp

    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return None
    from minimind.checkpoint import save_checkpoint
    from minimind.export.gguf import export_gguf

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_checkpoint(d / "ckpt", model.float(), tok)
        export_gguf(d / "ckpt", d / "m.gguf", dtype=dtype)
        prompt = prompts(model.config.vocab_size, length, 1)[0]
        ctx = mp.get_context("spawn")
        for repack in (True, False):
            q = ctx.Queue()
            child = ctx.Process(target=_llama_child, args=(str(d / "m.gguf"), prompt, new, torch.get_num_threads(),
                                                           repack, q))
            child.start()
            child.join()
            if child.exitcode == 0:
                return {**q.get(), "new": new, "note": "" if repack else "no repack (crashed with it)"}
            print(f"llama.cpp {dtype} exited with {child.exitcode} (repack {repack})", flush=True)
    return {"decode tok/s": float("nan"), "prefill tok/s": float("nan"), "new": new, "note": "crashed"}


def _llama_child(path: str, prompt: list[int], new: int, threads: int, repack: bool, out) -> None:
    import llama_cpp
    import llama_cpp.llama as llama_module

    defaults = llama_module.llama_cpp.llama_model_default_params

    def params():
        p = defaults()
        p.use_extra_bufts = repack
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    llm = llama_cpp.Llama(path, n_ctx=len(prompt) + new + 8, n_threads=threads, n_threads_batch=threads,
                          n_batch=max(len(prompt), 8), verbose=False)

    def run(n: int) -> tuple[float, float]:
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _, _ in zip(range(n), llm.generate([], top_k=1, temp=0.0, reset=False)):  # greedy, after the prompt
            pass
        return prefill, time.perf_counter() - t

    run(8)  # warm up
    prefill, decode = run(new)
    out.put({"decode tok/s": new / decode, "prefill tok/s": len(prompt) / prefill})


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new", type=int, default=128, help="new tokens per row (default 128)")
    ap.add_argument("--formats", default="auto,fp32,bf16,int8",
                    help="decode weight formats (infer/decode.py; auto: the one chat and serve pick here)")
    ap.add_argument("--compile", default="on", choices=["on", "off"], help="the fused decode step (default on)")
    ap.add_argument("--budget", type=float, default=60, help="seconds allowed per measurement")
    ap.add_argument("--llama-formats", default="f32,f16,q8_0", help="llama.cpp GGUF formats to compare")
    ap.add_argument("--no-llama", action="store_true")
    args = ap.parse_args()
    _, tok = corpus()  # a real tokenizer, so the GGUF export carries a matching vocabulary
    base = reference_model(tok.vocab_size)
    prefill_dtype = inference_dtype("cpu")
    info = machine_info()
    load = [os.getloadavg()[0]]
    print(f"{info['cpu']}, flags {' '.join(info['flags'])}, {info['threads']} threads, torch {info['torch']}; "
          f"{base.num_params() / 1e6:.1f}M parameters; prefill in {prefill_dtype}; load {load[0]:.1f}", flush=True)
    rows = []
    for fmt in args.formats.split(","):
        model = MiniMindForCausalLM(base.config).eval()
        model.load_state_dict(base.state_dict())
        t = time.perf_counter()
        engine = Engine(model.to(prefill_dtype), None, decode_weights=fmt, compile=args.compile, max_batch=8,
                        kv_memory_mb=64, frozen_weights=True)
        engine.warmup()
        setup = time.perf_counter() - t
        for length in PROMPTS:
            for batch in BATCHES:
                r = ours(engine, length, batch, args.new, args.budget)
                label = f"auto ({engine.decode_weights})" if fmt == "auto" else fmt  # what chat/serve pick
                rows.append({"engine": "minimind", "weights": label, "step": engine.step_fn.name, "prompt": length,
                             "batch": batch, **r, "setup s": setup})
                print(rows[-1], flush=True)
        del engine, model
    if not args.no_llama:
        for dtype in args.llama_formats.split(","):
            for length in PROMPTS:
                r = llama_cpp(base, tok, dtype, length, args.new)
                if r is None:
                    print("llama.cpp column skipped: llama-cpp-python is not installed (pip install llama-cpp-python)")
                    break
                rows.append({"engine": "llama.cpp", "weights": dtype, "prompt": length, "batch": 1, **r})
                print(rows[-1], flush=True)
    summary = targets(rows)
    load.append(os.getloadavg()[0])
    write_json("decode", {"machine": info, "model": "reference MiniMind small (512, 8 layers, 8/2 heads, MLP 1664)",
                          "params": base.num_params(), "prefill_dtype": str(prefill_dtype), "new_tokens": args.new,
                          "load_average_start_end": load,
                          "env": {k: v for k, v in os.environ.items() if k.startswith("MINIMIND_")},
                          "rows": rows, "targets": summary})
    print(f"\ndecode, reference MiniMind small shape, {info['cpu']} ({' '.join(info['flags'])}), "
          f"{info['threads']} threads, torch {info['torch']}, load average {load[0]:.1f} -> {load[1]:.1f}")
    print_table(rows, ["engine", "weights", "step", "prompt", "batch", "decode tok/s", "prefill tok/s", "note"])
    for line in summary["lines"]:
        print(line)


def targets(rows: list[dict]) -> dict:
    """The issue's ratios: batch-1 decode vs llama.cpp's best format, batch 8 vs batch 1."""
    lines, out = [], {}
    for length in PROMPTS:
        mine = [r for r in rows if r["engine"] == "minimind" and r["prompt"] == length]
        theirs = [r for r in rows if r["engine"] == "llama.cpp" and r["prompt"] == length]
        b1 = max((r for r in mine if r["batch"] == 1), key=lambda r: r["decode tok/s"], default=None)
        if b1 and theirs:
            best = max(theirs, key=lambda r: r["decode tok/s"] if r["decode tok/s"] == r["decode tok/s"] else -1)
            ratio = b1["decode tok/s"] / best["decode tok/s"]
            out[f"vs_llama_cpp_prompt{length}"] = ratio
            lines.append(f"prompt {length}: batch-1 decode, ours {b1['weights']} {b1['decode tok/s']:.0f} tok/s vs "
                         f"llama.cpp {best['weights']} {best['decode tok/s']:.0f} tok/s = {ratio:.2f} (target >= 0.5)")
        for fmt in sorted({r["weights"] for r in mine}):
            by = {r["batch"]: r["decode tok/s"] for r in mine if r["weights"] == fmt}
            if 1 in by and 8 in by:
                out[f"b8_over_b1_{fmt}_prompt{length}"] = by[8] / by[1]
                lines.append(f"prompt {length}: {fmt} batch 8 / batch 1 aggregate = {by[8] / by[1]:.2f} (target >= 4)")
    return {"lines": lines, **out}


if __name__ == "__main__":
    main()
