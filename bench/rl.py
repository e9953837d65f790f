"""RL cost: rollout throughput (a group of G samples vs one) and where an RL step's time goes.

    python bench/rl.py [--init SFT_CKPT] [--group 8] [--max-new-tokens 64] [--rollouts 3]

1. Rollout throughput: the sampler the RL commands use (train/rl/train.py engine_sampler) on one
   prompt from the built-in rlaif.jsonl, batch 1 vs a group of G copies (one per-sample seed each, as a
   rollout does); generated tokens per second, and the ratio.
2. Step time share: `train_rl` (what `minimind grpo` runs) for a few rollouts, with the sampler timed:
   the share of wall time (from the first rollout to the end: loading is left out) spent generating
   vs everything else (old/ref log-probs, advantages, the optimizer steps, the final checkpoint).

--init: an SFT checkpoint (a `minimind demo` run's sft/, the realistic case: replies stop on their
own); without it a fresh nano model with the built-in corpus's tokenizer (bench/.cache), whose
replies run to --max-new-tokens. Writes bench/rl.json and prints a table plus a markdown block for
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def fresh_model() -> Path:
    """A random nano model saved with the bench corpus's tokenizer (made once)."""
    import torch

    from bench.train import CACHE, corpus
    from minimind.checkpoint import save_checkpoint
    from minimind.config import get_preset
    from minimind.model import MiniMindForCausalLM

    out = CACHE / "rl_init"
    if not (out / "config.json").is_file():
        _, tok = corpus()
        torch.manual_seed(0)
        cfg = get_preset("nano", vocab_size=tok.vocab_size, bos_token_id=tok.im_start_id, eos_token_id=tok.eos_id,
                         pad_token_id=tok.pad_id)
        save_checkpoint(out, MiniMindForCausalLM(cfg), tok)
    return out


def throughput(init: Path, prompts: Path, group: int, max_new: int, repeats: int = 2) -> list[dict]:
    """Generated tokens/s of the RL sampler at batch 1 and at a group of `group` (best of `repeats`)."""
    import torch

    from minimind.checkpoint import load_checkpoint
    from minimind.tokenizer import render_chat
    from minimind.train.rl.rollout import load_rl_records
    from minimind.train.rl.train import engine_sampler

    model, tok = load_checkpoint(init)
    model.eval()
    rec = load_rl_records(prompts)[0]
    ids = render_chat(tok, rec["conversations"], add_generation_prompt=True)[0]
    sample = engine_sampler(model, tok)
    rows = []
    for n in (1, group):
        best = None
        for r in range(repeats):
            t0 = time.perf_counter()
            with torch.no_grad():
                outs = sample([ids] * n, 1.0, max_new, [1000 * r + i for i in range(n)], ())
            dt = time.perf_counter() - t0
            toks = sum(len(t) for t, _ in outs)
            if best is None or toks / dt > best["tok/s"]:
                best = {"batch": n, "tokens": toks, "seconds": dt, "tok/s": toks / dt}
        rows.append(best)
    rows[1]["vs batch 1"] = rows[1]["tok/s"] / rows[0]["tok/s"]
    return rows


def step_share(init: Path, prompts: Path, group: int, max_new: int, rollouts: int) -> dict:
    """Wall time of a short GRPO run split into generation and the rest."""
    from minimind.train.engine import TrainConfig
    from minimind.train.rl import train as rl_train
    from minimind.train.rl.rollout import RolloutConfig

    spent = {"gen": 0.0, "tokens": 0, "first": None}
    real = rl_train.engine_sampler

    def timed_sampler(model, tok):
        inner = real(model, tok)

        def generate(*a):
            t0 = time.perf_counter()
            spent["first"] = spent["first"] or t0
            outs = inner(*a)
            spent["gen"] += time.perf_counter() - t0
            spent["tokens"] += sum(len(t) for t, _ in outs)
            return outs

        return generate

    rl_train.engine_sampler = timed_sampler
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = rl_train.RLConfig(init=str(init), data=str(prompts), rollouts=rollouts,
                                    rollout=RolloutConfig(prompts_per_rollout=4, group_size=group,
                                                          max_new_tokens=max_new, dynamic_sampling=False))
            train = TrainConfig(out_dir=out, lr=1e-5, warmup=0, dtype="auto", progress=False, log_every=1,
                                save_every=0)
            rl_train.train_rl(cfg, train)
            wall = time.perf_counter() - spent["first"]  # from the first rollout: loading is not RL
    finally:
        rl_train.engine_sampler = real
    return {"rollouts": rollouts, "responses": rollouts * 4 * group, "wall s": wall, "generate s": spent["gen"],
            "generate share": spent["gen"] / wall, "rest share": 1 - spent["gen"] / wall,
            "generated tokens": spent["tokens"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--init", type=Path, help="SFT checkpoint (default: a fresh nano model)")
    ap.add_argument("--prompts", type=Path, help="RL prompts JSONL (default: the built-in rlaif.jsonl)")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--rollouts", type=int, default=3)
    args = ap.parse_args()
    from bench.peak import print_table, write_json
    from bench.train import corpus
    from minimind.runtime import machine_info

    data, _ = corpus()
    init = args.init or fresh_model()
    prompts = args.prompts or data / "rlaif.jsonl"
    tp = throughput(init, prompts, args.group, args.max_new_tokens)
    share = step_share(init, prompts, args.group, args.max_new_tokens, args.rollouts)
    info = machine_info()
    path = write_json("rl", {"machine": info, "init": str(init), "throughput": tp, "step_share": share})
    print(json.dumps(info))
    print_table(tp, ["batch", "tokens", "seconds", "tok/s", "vs batch 1"])
    print_table([share], list(share))
    print(f"\nwrote {path}\n\n| batch | tok/s | vs batch 1 |\n|---|---|---|")
    for r in tp:
        print(f"| {r['batch']} | {r['tok/s']:.0f} | {r.get('vs batch 1', 1.0):.2f}x |")
    print(f"\nGRPO, {share['rollouts']} rollouts x 4 prompts x {args.group}: generation "
          f"{share['generate share']:.0%} of {share['wall s']:.0f} s, the rest {share['rest share']:.0%}")


if __name__ == "__main__":
    main()
