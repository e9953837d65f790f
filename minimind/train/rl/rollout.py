"""One rollout path for every RL objective: sample, score, estimate advantages, feed the one engine.

The training engine (train/engine.py) pulls micro-batches from a data source and calls
`objective.loss(model, batch)`; for RL that source is `RolloutSource`. Each time its buffer runs
dry it makes a rollout with the *current* policy:

    1. take P prompts (this rank's shard of a seeded shuffle of the prompt file)
    2. sample G responses per prompt with the generation engine at temperature tau (G = 1 for PPO/SPO);
       a response keeps its closing <|im_end|>, so the policy learns when to stop. With `agent`, a
       response is a whole tool-using trajectory (agent.run_agents: calls, tool results, answer) and
       its action mask keeps only the tokens the policy sampled - tool results and the template's
       glue between turns are context, never trained
    3. score them: R = reward(record, reply) (rules in [0, 1]; with `agent`, reward/tools.py scores
       the trajectory, which the reply carries as reply["trajectory"])
    4. dynamic sampling (group objectives): a group whose G rewards are all equal has zero advantage
       everywhere - full cost, no signal - so it is dropped and fresh prompts are sampled in its place
       (up to `max_refills` rounds); the share of such groups is logged as zero_var_frac
    5. log pi_old (the policy as it is now) and log pi_ref of every response token, in the very
       micro-batches the engine will train on (same shapes, same kernels: the first ratio is exactly 1)
    6. objective.advantages(...) fills A (and PPO's returns)
    7. cut the rollout into `minibatches` optimizer steps per epoch, for `ppo_epochs` epochs (rows
       reshuffled each epoch: whole groups for group objectives, so a group's prompt runs once in a
       micro-batch, forward.py); every optimizer step is `micro_batches` engine micro-batches

and then hands out one micro-batch per `next()`. The engine's `grad_accum` must equal
`micro_batches` (the RL command sets it). After the first optimizer step of a rollout the policy
differs from pi_old, so ratios move away from 1 and the clipping / CISPO's cap act.

Under DDP every rank samples its own prompts; a group never spans ranks. Each optimizer step's loss
is normalised by its token count summed over all micro-batches and ranks (one all-reduce), so the
averaged gradient equals that of one process training on the union of the shards.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ...errors import UserError
from ...runtime import autocast
from .forward import policy_forward
from .objectives import sequence_drift_kl


@dataclass
class RolloutConfig:
    prompts_per_rollout: int = 8  # P, per rank
    group_size: int = 8  # G samples per prompt (objectives without groups use 1)
    max_new_tokens: int = 96
    temperature: float = 1.0
    ppo_epochs: int = 1  # passes over each rollout
    minibatches: int = 1  # optimizer steps per pass
    micro_batches: int = 1  # engine micro-batches per optimizer step (= grad_accum)
    dynamic_sampling: bool = True
    max_refills: int = 2
    think: bool = False
    agent: bool = False  # responses are tool-using trajectories (agent.py) instead of single replies
    max_tool_rounds: int = 2  # agent: tool rounds per trajectory
    drift_rows: int = 8  # SPO: responses kept to measure how far the policy moved between rollouts

    @property
    def steps_per_rollout(self) -> int:
        return self.ppo_epochs * self.minibatches


def load_rl_records(path, on_bad_record: str = "error", need_gt: bool = False) -> list[dict]:
    """RL prompts from JSONL: {"conversations": [...], "gt"?}. A trailing assistant turn with no content
    (the public rlaif format stores "" or "None" there) is dropped: it is what the policy generates."""
    from ...data.records import iter_records

    out = []
    for lineno, r in iter_records(path, "rl", on_bad_record):
        conv = list(r["conversations"])
        while conv and conv[-1]["role"] == "assistant" and str(conv[-1].get("content") or "").strip() in ("", "None"):
            conv.pop()
        if not conv or conv[-1]["role"] not in ("user", "tool"):
            raise UserError(f"{path}:{lineno}: an RL prompt must end with a user (or tool) turn")
        if need_gt and "gt" not in r:
            raise UserError(f"{path}:{lineno}: no 'gt' (ground truth) field: the rule reward needs one; "
                            f"add gt to every record or use a reward model (--reward-model)")
        out.append({"conversations": conv, "gt": r.get("gt"), "key": f"{lineno}",
                    "tool": r.get("tool")})  # agent_rl.jsonl: the tool the task needs
    if not out:
        raise UserError(f"{path}: no RL prompts")
    return out


def _all_reduce_sum(x: float, device) -> float:
    if dist.is_available() and dist.is_initialized():
        t = torch.tensor([x], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item())
    return x


def sample_and_score(records: list[dict], tok, generate, reward, group: int, temperature: float,
                     max_new_tokens: int, seed: int, think: bool, agent: bool = False, max_tool_rounds: int = 2,
                     max_len: int | None = None) -> dict:
    """`group` responses to each record (sample i seeded seed + i), parsed and scored by `reward`.
    agent=True: each response is a whole tool-using trajectory (agent.run_agents); its mask marks the
    tokens the model produced (tool results are in the response but never trained)."""
    from ...infer.parse import parse_assistant
    from ...tokenizer import render_chat

    prompts = [render_chat(tok, r["conversations"], add_generation_prompt=True, open_thinking=think)[0]
               for r in records for _ in range(group)]
    seeds = [seed + i for i in range(len(prompts))]
    suppress = () if think else tuple(i for i in (tok.think_id, tok.end_think_id) if i is not None)
    t0 = time.perf_counter()
    if agent:
        outs, masks, replies = _run_agents(records, tok, generate, group, temperature, max_new_tokens, seeds, think,
                                           suppress, max_tool_rounds, max_len)
    else:
        outs = generate(prompts, temperature, max_new_tokens, seeds, suppress)
        masks = [None] * len(outs)
        stop = {tok.eos_id, tok.eot_id}
        replies = [{**parse_assistant(tok.decode([t for t in tokens if t not in stop]), open_thinking=think),
                    "finish_reason": finish} for tokens, finish in outs]
    gen_s = time.perf_counter() - t0
    recs = [r for r in records for _ in range(group)]
    rewards, parts = reward.score(recs, replies)
    return {"records": recs, "prompts": prompts, "responses": [t for t, _ in outs], "masks": masks,
            "replies": replies, "rewards": rewards, "parts": parts, "gen_s": gen_s,
            "gen_tokens": sum(len(t) if m is None else sum(m) for (t, _), m in zip(outs, masks))}


def _run_agents(records, tok, generate, group, temperature, max_new_tokens, seeds, think, suppress, max_tool_rounds,
                max_len) -> tuple[list, list, list]:
    """G trajectories per record -> ([(response ids, finish)], [action masks], [replies with the trajectory])."""
    from ...agent import run_agents, start

    trajs = [start(tok, r["conversations"], think=think) for r in records for _ in range(group)]
    given = [len(t.ids) for t in trajs]
    run_agents(generate, tok, trajs, None, max_tool_rounds, temperature, max_new_tokens, seeds, think, suppress,
               max_len=max_len)
    outs = [(t.ids[n:], "stop" if t.finish == "stop" else "length") for t, n in zip(trajs, given)]
    masks = [t.action_mask[n:] for t, n in zip(trajs, given)]
    replies = [{**t.reply, "finish_reason": o[1], "trajectory": t} for t, o in zip(trajs, outs)]
    return outs, masks, replies


class RolloutSource:
    """An iterator of RL micro-batches for the training engine (see the module docstring)."""

    def __init__(self, records: list[dict], tok, policy, ref, objective, reward, generate, cfg: RolloutConfig,
                 seed: int = 0, rank: int = 0, world_size: int = 1, dtype=torch.float32):
        """generate(prompts: list[list[int]], temperature, max_new_tokens, seeds, suppress_ids) ->
        list of (response token ids incl. a final stop token if it stopped, finish_reason)."""
        self.records, self.tok, self.policy, self.ref = records, tok, policy, ref
        self.objective, self.reward, self.generate, self.cfg = objective, reward, generate, cfg
        self.seed, self.rank, self.world_size, self.dtype = seed, rank, world_size, dtype
        self.group = cfg.group_size if objective.uses_groups else 1
        self.rollouts = 0  # rollouts made so far (drives every seed: resume is exact)
        self.cursor = 0  # prompts consumed from the current epoch's order
        self.epoch = 0
        self.buffer: list[dict] = []
        self.probe: dict | None = None  # SPO drift: a few rows of the previous rollout

    # ------------------------------------------------------------------ iterator protocol
    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if not self.buffer:
            self.buffer = self.make_rollout()
        return self.buffer.pop(0)

    def __len__(self) -> int:  # optimizer steps in one pass over the prompts
        per = self.cfg.prompts_per_rollout * self.world_size
        return max(1, len(self.records) // per) * self.cfg.steps_per_rollout

    def state_dict(self) -> dict:
        return {"rollouts": self.rollouts, "cursor": self.cursor, "epoch": self.epoch,
                "buffer": self.buffer, "probe": self.probe}

    def load_state_dict(self, state: dict) -> None:
        self.rollouts, self.cursor, self.epoch = state["rollouts"], state["cursor"], state["epoch"]
        self.buffer, self.probe = list(state["buffer"]), state["probe"]

    # ------------------------------------------------------------------ prompts
    def _order(self) -> np.ndarray:
        perm = np.random.default_rng(self.seed + 7919 * self.epoch).permutation(len(self.records))
        return perm[self.rank::self.world_size]

    def next_prompts(self, n: int) -> list[dict]:
        order, out = self._order(), []
        while len(out) < n:
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
                order = self._order()
            out.append(self.records[int(order[self.cursor])])
            self.cursor += 1
        return out

    # ------------------------------------------------------------------ sampling and scoring
    def sample(self, records: list[dict], round_: int) -> dict:
        """G responses to each record, parsed and scored."""
        base = (self.seed * 1_000_003 + self.rollouts * 10_007 + round_ * 101 + self.rank) * 1000
        self.policy.eval()
        return sample_and_score(records, self.tok, self.generate, self.reward, self.group, self.cfg.temperature,
                                self.cfg.max_new_tokens, base, self.cfg.think, agent=self.cfg.agent,
                                max_tool_rounds=self.cfg.max_tool_rounds,
                                max_len=self.policy.config.max_position_embeddings)

    def collect(self) -> tuple[dict, dict]:
        """Sample P groups with signal (dynamic sampling) -> (kept samples, stats)."""
        P, G = self.cfg.prompts_per_rollout, self.group
        kept = {k: [] for k in ("records", "prompts", "responses", "masks", "replies", "rewards")}
        kept_parts: dict[str, list] = {}
        groups = zero = gen_tokens = 0
        gen_s = 0.0
        for round_ in range(1 + (self.cfg.max_refills if self.cfg.dynamic_sampling and G > 1 else 0)):
            need = P - len(kept["rewards"]) // G
            if need <= 0:
                break
            s = self.sample(self.next_prompts(need), round_)
            gen_s, gen_tokens = gen_s + s["gen_s"], gen_tokens + s["gen_tokens"]
            for g in range(need):
                sl = slice(g * G, (g + 1) * G)
                groups += 1
                flat = G > 1 and max(s["rewards"][sl]) == min(s["rewards"][sl])
                zero += flat
                if flat and self.cfg.dynamic_sampling and round_ < self.cfg.max_refills:
                    continue  # no signal: drop it, refill in the next round
                for k in kept:
                    kept[k] += s[k][sl]
                for k, v in s["parts"].items():
                    kept_parts.setdefault(k, []).extend(v[sl])
        r = np.array(kept["rewards"], dtype=np.float64)
        lens = [len(t) for t in kept["responses"]]
        stats = {"reward": float(r.mean()), "reward_std": float(r.std()), "zero_var_frac": zero / max(groups, 1),
                 "response_len": float(np.mean(lens)), "rollout_tok_s": gen_tokens / max(gen_s, 1e-9),
                 "gen_s": gen_s, "truncated_frac": float(np.mean([y["finish_reason"] == "length"
                                                                  for y in kept["replies"]]))}
        stats.update({f"reward/{k}": float(np.mean(v)) for k, v in kept_parts.items()
                      if v and isinstance(v[0], (int, float))})
        return kept, stats

    # ------------------------------------------------------------------ tensors
    def tensors(self, kept: dict) -> dict:
        """input_ids (N, T) right-padded, mask (N, T-1) on response targets, rewards (N,).

        A response with an action mask (agent trajectories) trains only where that mask is 1."""
        rows = [p + r for p, r in zip(kept["prompts"], kept["responses"])]
        T = max(len(x) for x in rows)
        N = len(rows)
        ids = torch.full((N, T), self.tok.pad_id, dtype=torch.long)
        mask = torch.zeros((N, T - 1))
        for i, (p, r, m) in enumerate(zip(kept["prompts"], kept["responses"], kept["masks"])):
            ids[i, :len(p) + len(r)] = torch.tensor(p + r)
            # target t+1 is a response token
            mask[i, len(p) - 1:len(p) - 1 + len(r)] = 1.0 if m is None else torch.tensor(m, dtype=mask.dtype)
        return {"input_ids": ids, "mask": mask, "rewards": torch.tensor(kept["rewards"], dtype=torch.float32),
                "group_size": self.group, "keys": [r["key"] for r in kept["records"]]}

    def micro_slices(self, rows: list[int]) -> list[list[int]]:
        """A step's rows cut into `micro_batches` parts of sizes differing by at most one; contiguous, so
        the rows of a group stay together where `shuffled_rows` kept them together."""
        A, n = self.cfg.micro_batches, len(rows)
        return [rows[i * n // A:(i + 1) * n // A] for i in range(A)]

    def shuffled_rows(self, rng: random.Random, N: int) -> list[int]:
        """The rollout's rows (laid out group by group) in a random order. Group objectives that share
        prompts shuffle whole groups, rows kept in their group, so each group's prompt runs once in a
        micro-batch (forward.py) instead of being scattered over several; others shuffle single rows."""
        if self.group > 1 and self.objective.share_prompts:
            groups = [list(range(g, min(g + self.group, N))) for g in range(0, N, self.group)]
            rng.shuffle(groups)
            return [i for g in groups for i in g]
        rows = list(range(N))
        rng.shuffle(rows)
        return rows

    @staticmethod
    def width(mask, rows) -> int:
        """Columns a micro-batch needs: up to its last response token (the rest is right padding)."""
        m = mask[rows]
        return int(m.sum(0).nonzero().max()) + 2 if bool(m.any()) else 2

    @torch.no_grad()
    def score_tokens(self, roll: dict, device) -> None:
        """log pi_old (and PPO's old_values) and log pi_ref of every row, in the training micro-batches (so
        memory stays what training needs, and a group's prompt runs once: forward.py). log pi_old comes
        from the objective's own forward in those very shapes, so the first ratio is exactly 1. With one
        optimizer step per rollout and an objective that reads log pi_old only in its loss, the policy's
        pass is skipped: the loss takes it from its own forward (objectives.PolicyGradient.old_logp)."""
        score_old = self.cfg.steps_per_rollout > 1 or self.objective.needs_old_logp_first
        old = torch.zeros_like(roll["mask"]) if score_old else None
        values = torch.zeros_like(roll["mask"]) if score_old and hasattr(self.objective, "values") else None
        ref = torch.zeros_like(roll["mask"])
        for chunk in self.plan_chunks(roll["input_ids"].shape[0]):
            T = self.width(roll["mask"], chunk)
            b = {"input_ids": roll["input_ids"][chunk][:, :T].to(device),
                 "mask": roll["mask"][chunk][:, :T - 1].to(device)}
            with autocast(device, self.dtype):
                if old is not None:
                    fwd = self.objective.forward(self.policy, b)
                    old[chunk, :T - 1] = fwd.logp.float().cpu()
                    if values is not None:
                        values[chunk, :T - 1] = self.objective.values(fwd.hidden).cpu()
                ref[chunk, :T - 1] = policy_forward(self.ref, b["input_ids"], b["mask"],
                                                    self.cfg.temperature).logp.float().cpu()
        if old is not None:
            roll["old_logp"] = old * roll["mask"]
        if values is not None:
            roll["old_values"] = values * roll["mask"]
        roll["ref_logp"] = ref * roll["mask"]

    def plan(self, N: int) -> list[list[list[int]]]:
        """Row indices of every optimizer step of this rollout, each a list of micro-batches."""
        rng = random.Random(self.seed * 31 + self.rollouts)
        steps = []
        for _ in range(self.cfg.ppo_epochs):
            rows = self.shuffled_rows(rng, N)
            per = -(-N // self.cfg.minibatches)
            for m in range(self.cfg.minibatches):
                part = rows[m * per:(m + 1) * per]
                if part:
                    steps.append(self.micro_slices(part))
        return steps

    def plan_chunks(self, N: int) -> list[list[int]]:
        """The first epoch's micro-batches: scoring in exactly these shapes makes the first ratio 1."""
        return [mb for step in self.plan(N)[:self.cfg.minibatches] for mb in step]

    # ------------------------------------------------------------------ one rollout
    def make_rollout(self) -> list[dict]:
        device = next(self.policy.parameters()).device
        self.measure_drift(device)
        kept, stats = self.collect()
        roll = self.tensors(kept)
        self.score_tokens(roll, device)
        self.objective.advantages(roll, self.policy)
        if "baseline_mean" in roll:
            stats["baseline"] = roll["baseline_mean"]
        self.keep_probe(roll)
        batches = []
        level = getattr(self.objective, "level", "token")
        A, W = self.cfg.micro_batches, self.world_size
        per_token = {k: roll[k] for k in ("mask", "old_logp", "ref_logp", "adv", "returns", "old_values")
                     if k in roll}
        for step in self.plan(roll["input_ids"].shape[0]):
            rows = [i for mb in step for i in mb]
            count = float(roll["mask"][rows].sum()) if level == "token" else float(len(rows))
            denom = _all_reduce_sum(count, device) / (A * W)
            for mb in step:
                idx = torch.tensor(mb)
                T = self.width(roll["mask"], mb)
                b = {k: v[idx][:, :T - 1] for k, v in per_token.items()}
                b["input_ids"] = roll["input_ids"][idx][:, :T]
                b["denominator"] = torch.tensor(max(denom, 1e-9))
                b["stats"] = stats
                batches.append(b)
        self.rollouts += 1
        self.policy.train()
        return batches

    # ------------------------------------------------------------------ SPO: how far the policy moved
    def keep_probe(self, roll: dict) -> None:
        if not hasattr(self.objective, "record_drift"):
            return
        n = min(self.cfg.drift_rows, roll["input_ids"].shape[0])
        self.probe = {"input_ids": roll["input_ids"][:n].clone(), "mask": roll["mask"][:n].clone(),
                      "logp": roll["old_logp"][:n].clone()}

    @torch.no_grad()
    def measure_drift(self, device) -> None:
        if self.probe is None or not hasattr(self.objective, "record_drift"):
            return
        ids, mask = self.probe["input_ids"].to(device), self.probe["mask"].to(device)
        with autocast(device, self.dtype):
            now = policy_forward(self.policy, ids, mask, self.cfg.temperature, share=False).logp.float().cpu()
        self.objective.record_drift(sequence_drift_kl(self.probe["logp"], now * self.probe["mask"],
                                                      self.probe["mask"]))

