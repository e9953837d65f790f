"""RL cost: rollout throughput (a group of G samples vs one) and where an RL step's time goes.

    python bench/rl.py [--init SFT_CKPT] [--group 8] [--max-new-tokens 64] [--rollouts 3]

1. Rollout throughput: the sampler the RL commands use (train/rl/train.py engine_sampler) on the first
   prompt of the built-in rlaif.jsonl (short) and of agent_rl.jsonl (a system message with tool
   schemas: long), batch 1 vs a group of G copies (one per-sample seed each, as a rollout does), the
   group with its prefill shared (the engine's way) and with one prefill per row; generated tokens
   per second, and the ratio. Then a whole rollout of agentic prompts (8 prompts x G): the sampler as
   it is (64 rows at once, shared prefills) against rows of 16 with one prefill per row.
2. The training forward: one GRPO micro-batch's loss, forward and backward (4 prompts x G), each
   group's prompt run once (train/rl/forward.py) vs the plain forward over whole rows, for rlaif.jsonl
   and agentic trajectories of agent_rl.jsonl.
3. Step time share: `train_rl` (what `minimind grpo` runs) for a few rollouts, with the sampler and
   the old/reference log-probs timed: the share of wall time (from the first rollout to the end:
   loading is left out) spent generating, scoring the sampled sequences, and on everything else
   (the training forward and backward, the optimizer steps, the final checkpoint); for rlaif.jsonl
   and, with --agent's trajectories, agent_rl.jsonl.

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


def per_row_sampler(model, tok, max_batch: int):
    """A sampler like engine_sampler's over an engine of `max_batch` rows in which every row prefills
    its own prompt (no copying from a running row with the same prompt)."""
    from minimind.infer.engine import Engine, SamplingParams

    engine = Engine(model, tok, max_batch=max_batch)
    engine._prefill = lambda req, donor=None: Engine._prefill(engine, req)

    def sample(prompts, temperature, max_new_tokens, seeds, suppress):
        params = [SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 seed=seed) for seed in seeds]
        return [(r.tokens, r.finish_reason) for r in engine.generate(prompts, params)]

    return sample


def best_rate(sample, prompts: list[list[int]], max_new: int, repeats: int = 2) -> dict:
    """Generated tokens, seconds and tokens/s of the fastest of `repeats` calls (one seed per row)."""
    import torch

    best = None
    for r in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            outs = sample(prompts, 1.0, max_new, [1000 * r + i for i in range(len(prompts))], ())
        dt = time.perf_counter() - t0
        toks = sum(len(t) for t, _ in outs)
        if best is None or toks / dt > best["tok/s"]:
            best = {"tokens": toks, "seconds": dt, "tok/s": toks / dt}
    return best


def throughput(init: Path, prompt_files: dict[str, Path], group: int, max_new: int) -> list[dict]:
    """Generated tokens/s of the RL sampler at batch 1 and at a group of `group`, for the first prompt
    of each file; the group twice: sharing one prefill (the engine's way: a row whose prompt a running
    row has copies its keys and values) and with every row prefilled alone, in the same run."""
    from minimind.checkpoint import load_checkpoint
    from minimind.tokenizer import render_chat
    from minimind.train.rl.rollout import load_rl_records
    from minimind.train.rl.train import engine_sampler

    model, tok = load_checkpoint(init)
    model.eval()
    rows = []
    for name, path in prompt_files.items():
        ids = render_chat(tok, load_rl_records(path)[0]["conversations"], add_generation_prompt=True)[0]
        for n, prefill in ((1, "-"), (group, "shared"), (group, "one per row")):
            sample = per_row_sampler(model, tok, 64) if prefill == "one per row" else engine_sampler(model, tok)
            row = {"prompt": name, "prompt tokens": len(ids), "batch": n, "prefill": prefill,
                   **best_rate(sample, [ids] * n, max_new)}
            if n == 1:
                base = row["tok/s"]
            rows.append({**row, "vs batch 1": row["tok/s"] / base})
    return rows


def rollout_throughput(init: Path, path: Path, group: int, max_new: int, n_prompts: int = 8) -> list[dict]:
    """Generated tokens/s for a rollout's worth of prompts (n_prompts x group rows submitted at once):
    the sampler as engine_sampler makes it, and with rows of 16 and one prefill per row (before)."""
    from minimind.checkpoint import load_checkpoint
    from minimind.tokenizer import render_chat
    from minimind.train.rl.rollout import load_rl_records
    from minimind.train.rl.train import engine_sampler

    model, tok = load_checkpoint(init)
    model.eval()
    recs = load_rl_records(path)[:n_prompts]
    prompts = [render_chat(tok, r["conversations"], add_generation_prompt=True)[0] for r in recs for _ in range(group)]
    rows = [{"setup": setup, "rows": len(prompts), "prompt tokens (mean)": sum(map(len, prompts)) / len(prompts),
             **best_rate(sample, prompts, max_new)}
            for setup, sample in (("engine_sampler", engine_sampler(model, tok)),
                                  ("rows of 16, one prefill per row", per_row_sampler(model, tok, 16)))]
    return [{**r, "vs engine_sampler": r["tok/s"] / rows[0]["tok/s"]} for r in rows]


def train_forward(init: Path, path: Path, group: int, max_new: int, agent: bool, n_prompts: int = 4,
                  repeats: int = 3) -> list[dict]:
    """Seconds of one GRPO micro-batch's loss, forward and backward (a rollout of n_prompts x group
    rows, as `step_share` trains on), with each group's prompt run once (forward.py) and with the
    plain forward over whole rows; the fastest of `repeats` each, alternating, in the training dtype."""
    import torch

    from minimind.checkpoint import load_checkpoint
    from minimind.reward.rules import RuleReward
    from minimind.reward.tools import ToolReward
    from minimind.runtime import autocast, freeze, pick_device, pick_dtype
    from minimind.train.rl.forward import prompt_groups
    from minimind.train.rl.objectives import GRPO
    from minimind.train.rl.rollout import RolloutConfig, RolloutSource, load_rl_records
    from minimind.train.rl.train import engine_sampler

    policy, tok = load_checkpoint(init)
    device = pick_device("cpu")
    dtype = pick_dtype("auto", device)
    ref = freeze(load_checkpoint(init)[0])
    objective = GRPO()
    cfg = RolloutConfig(prompts_per_rollout=n_prompts, group_size=group, max_new_tokens=max_new,
                        dynamic_sampling=False, agent=agent)
    src = RolloutSource(load_rl_records(path), tok, policy, ref, objective, ToolReward() if agent else RuleReward(),
                        engine_sampler(policy, tok), cfg, dtype=dtype)
    batch = src.make_rollout()[0]
    ids, mask = batch["input_ids"], batch["mask"]
    real = int(sum(int(m.nonzero().max()) + 2 for m in mask))  # tokens of the rows, padding left out
    once = sum(P + len(rows) * (max(int(mask[i].nonzero().max()) for i in rows) + 1 - P)
               for P, rows in prompt_groups(ids, mask))
    best = {True: float("inf"), False: float("inf")}
    for _ in range(repeats):
        for share in (True, False):
            objective.share_prompts = share
            policy.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with autocast(device, dtype):
                loss, _ = objective.loss(policy, batch)
            loss.backward()
            best[share] = min(best[share], time.perf_counter() - t0)
    return [{"prompts": path.stem, "rows": ids.shape[0], "forward": name, "tokens computed": n,
             "seconds": best[share], "vs plain": best[False] / best[share]}
            for name, share, n in (("each prompt once", True, once), ("plain, whole rows", False, ids.numel()))] + [
        {"prompts": path.stem, "rows": ids.shape[0], "forward": "(rows without padding)", "tokens computed": real,
         "seconds": float("nan"), "vs plain": float("nan")}]


def step_share(init: Path, prompts: Path, group: int, max_new: int, rollouts: int, agent: bool = False) -> dict:
    """Wall time of a short GRPO run split into generation, the old/reference log-probs of the
    sampled sequences, and the rest (the training forward and backward, the optimizer, the checkpoint)."""
    from minimind.train.engine import TrainConfig
    from minimind.train.rl import train as rl_train
    from minimind.train.rl.rollout import RolloutConfig, RolloutSource

    spent = {"gen": 0.0, "score": 0.0, "tokens": 0, "first": None}
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

    real_score = RolloutSource.score_tokens

    def timed_score(self, roll, device):
        t0 = time.perf_counter()
        real_score(self, roll, device)
        spent["score"] += time.perf_counter() - t0

    rl_train.engine_sampler, RolloutSource.score_tokens = timed_sampler, timed_score
    try:
        with tempfile.TemporaryDirectory() as out:
            cfg = rl_train.RLConfig(init=str(init), data=str(prompts), rollouts=rollouts,
                                    rollout=RolloutConfig(prompts_per_rollout=4, group_size=group,
                                                          max_new_tokens=max_new, dynamic_sampling=False,
                                                          agent=agent))
            train = TrainConfig(out_dir=out, lr=1e-5, warmup=0, dtype="auto", progress=False, log_every=1,
                                save_every=0)
            rl_train.train_rl(cfg, train)
            wall = time.perf_counter() - spent["first"]  # from the first rollout: loading is not RL
    finally:
        rl_train.engine_sampler, RolloutSource.score_tokens = real, real_score
    return {"prompts": prompts.stem, "rollouts": rollouts, "responses": rollouts * 4 * group, "wall s": wall,
            "generate s": spent["gen"], "generate share": spent["gen"] / wall,
            "log-probs share": spent["score"] / wall, "rest share": 1 - (spent["gen"] + spent["score"]) / wall,
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
    files = {"rlaif": prompts}
    if args.prompts is None:  # the agentic-RL prompts: a system message listing tool schemas (long)
        files["agent_rl"] = data / "agent_rl.jsonl"
    tp = throughput(init, files, args.group, args.max_new_tokens)
    roll = rollout_throughput(init, data / "agent_rl.jsonl", args.group, args.max_new_tokens)
    fwd = train_forward(init, prompts, args.group, args.max_new_tokens, agent=False)
    if args.prompts is None:
        fwd += train_forward(init, data / "agent_rl.jsonl", args.group, args.max_new_tokens, agent=True)
    shares = [step_share(init, prompts, args.group, args.max_new_tokens, args.rollouts)]
    if args.prompts is None:  # agentic GRPO: tool-using trajectories, long prompts
        shares.append(step_share(init, data / "agent_rl.jsonl", args.group, args.max_new_tokens, args.rollouts,
                                 agent=True))
    info = machine_info()
    path = write_json("rl", {"machine": info, "init": str(init), "throughput": tp, "rollout": roll,
                             "train_forward": fwd, "step_share": shares})
    print(json.dumps(info))
    print_table(tp, ["prompt", "prompt tokens", "batch", "prefill", "tokens", "seconds", "tok/s", "vs batch 1"])
    print_table(roll, list(roll[0]))
    print_table(fwd, list(fwd[0]))
    print_table(shares, list(shares[0]))
    print(f"\nwrote {path}\n\n| prompt (tokens) | batch | prefill | tok/s | vs batch 1 |\n|---|---|---|---|---|")
    for r in tp:
        print(f"| {r['prompt']} ({r['prompt tokens']}) | {r['batch']} | {r['prefill']} | {r['tok/s']:.0f} | "
              f"{r['vs batch 1']:.2f}x |")
    print(f"\n| a rollout of agentic prompts ({roll[0]['rows']} rows) | tok/s | vs engine_sampler |\n|---|---|---|")
    for r in roll:
        print(f"| {r['setup']} | {r['tok/s']:.0f} | {r['vs engine_sampler']:.2f}x |")
    print("\n| GRPO micro-batch: loss, forward and backward | rows | tokens computed | s | vs plain |\n"
          "|---|---|---|---|---|")
    for r in fwd:
        if r["seconds"] == r["seconds"]:
            print(f"| {r['prompts']}, {r['forward']} | {r['rows']} | {r['tokens computed']} | {r['seconds']:.2f} | "
                  f"{r['vs plain']:.2f}x |")
    for share in shares:
        print(f"\nGRPO on {share['prompts']}, {share['rollouts']} rollouts x 4 prompts x {args.group}: generation "
              f"{share['generate share']:.0%} of {share['wall s']:.0f} s, old/reference log-probs "
              f"{share['log-probs share']:.0%}, the rest {share['rest share']:.0%}")


if __name__ == "__main__":
    main()
