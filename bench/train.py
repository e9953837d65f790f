"""Training throughput: useful tokens/s and MFU for pretraining and SFT, through the real engine.

    python bench/train.py [--presets nano,minimind2-small] [--seq 512] [--steps 6] [--compile]

For each (preset, stage, dtype[, compile]) a fresh subprocess builds the model, the built-in corpus
loaders (prepared once, cached in bench/.cache) and the engine's Trainer, runs warm-up steps, then
times `--steps` optimizer steps of `Trainer.train_step`. Reported:

    useful tok/s = non-padding tokens processed / second (pretraining rows are always full)
    MFU          = useful tok/s * training FLOPs per token (ModelConfig.flops_per_token) / matmul peak
                   (the peak of the same dtype measured by bench/peak.py in this run)
    peak RSS     = the subprocess's maximum resident memory

Writes bench/train.json; prints a table last.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "bench" / ".cache"


def corpus():
    """Built-in corpus + tokenizer (6400 target vocab), made once."""
    from minimind.data.synth import synth_corpus
    from minimind.tokenizer import Tokenizer, train_tokenizer

    data, tok_dir = CACHE / "data", CACHE / "tokenizer"
    if not (data / "manifest.json").is_file():
        synth_corpus(data, seed=0, size=1.0, progress=False)
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer([data / "pretrain.jsonl", data / "sft.jsonl"], tok_dir, progress=False)
    return data, Tokenizer.load(tok_dir)


def run_one(preset: str, stage: str, dtype: str, seq: int, batch: int, steps: int, compile: bool) -> dict:
    import torch

    from minimind.config import get_preset
    from minimind.data.loader import make_loader
    from minimind.model import MiniMindForCausalLM
    from minimind.train.engine import TrainConfig, Trainer
    from minimind.train.pretrain import LanguageModeling
    from minimind.train.run import prepared_data
    from minimind.train.sft import SupervisedFineTuning

    data, tok = corpus()
    torch.manual_seed(0)
    cfg = get_preset(preset, vocab_size=tok.vocab_size, max_position_embeddings=max(seq, 2048))
    model = MiniMindForCausalLM(cfg)
    kind = stage
    src = data / ("pretrain.jsonl" if stage == "pretrain" else "sft.jsonl")
    prepared = prepared_data(str(src), tok, kind, seq, "error", progress=False)
    loader = make_loader(prepared, batch, seq, seed=0)
    obj = LanguageModeling() if stage == "pretrain" else SupervisedFineTuning()
    tcfg = TrainConfig(out_dir=str(CACHE / "run"), steps=10**6, batch_size=batch, dtype=dtype,
                       compile=compile, device="cpu", progress=False, warmup=0)
    trainer = Trainer(model, obj, loader, tok, tcfg)
    it = iter(loader)
    real = [0]

    def counting():  # count non-padding tokens of each batch as it goes by
        for b in it:
            real[0] += int((b["input_ids"] != tok.pad_id).sum()) if stage == "sft" else b["input_ids"].numel()
            yield b

    src_iter = counting()
    for _ in range(2 if not compile else 3):  # warm-up (and compilation)
        trainer.train_step(src_iter)
    real[0] = 0
    t = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(src_iter)
    el = time.perf_counter() - t
    tps = real[0] / el
    # padded width varies in SFT; FLOPs per token at the mean row length is close enough
    flops = cfg.flops_per_token(seq if stage == "pretrain" else seq // 2)
    return {"preset": preset, "stage": stage, "dtype": dtype, "compile": compile, "seq": seq, "batch": batch,
            "useful tok/s": tps, "TFLOP/s": tps * flops / 1e12,
            "peak RSS MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--presets", default="nano,minimind2-small")
    ap.add_argument("--stages", default="pretrain,sft")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile (bf16)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(**json.loads(args.one))))
        return
    from bench.peak import machine, peaks, print_table, write_json

    corpus()
    peak = peaks()
    jobs = [dict(preset=p, stage=s, dtype=d, seq=args.seq, batch=args.batch, steps=args.steps, compile=False)
            for p in args.presets.split(",") for s in args.stages.split(",") for d in args.dtypes.split(",")]
    if args.compile:
        jobs += [dict(j, compile=True) for j in jobs if j["dtype"] == "bf16"]
    rows = []
    for j in jobs:
        r = subprocess.run([sys.executable, __file__, "--one", json.dumps(j)], capture_output=True, text=True)
        if r.returncode:
            print(f"failed: {j}\n{r.stderr[-2000:]}", file=sys.stderr)
            continue
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["MFU"] = row["TFLOP/s"] * 1e3 / peak[row["dtype"]]
        rows.append(row)
        print(json.dumps(row), flush=True)
    write_json("train", {"machine": machine(), "peak_gflops": peak, "rows": rows})
    m = machine()
    print(f"\ntraining throughput, {m['cpu']}, {m['threads']} threads, torch {m['torch']}; "
          f"peak bf16 {peak['bf16']:.0f} GFLOP/s, fp32 {peak['fp32']:.0f} GFLOP/s (measured now)")
    print_table(rows, ["preset", "stage", "dtype", "compile", "seq", "batch", "useful tok/s", "MFU", "peak RSS MB"])


if __name__ == "__main__":
    main()
