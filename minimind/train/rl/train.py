"""`train_rl(RLConfig)`: an SFT model, a prompt file, a reward and an objective -> the one engine.

Nothing here loops over data: the rollout source (rollout.py) makes batches, the objective
(objectives.py) turns them into a loss, and the engine (train/engine.py) does the rest - devices,
bf16, accumulation, clipping, schedule, DDP, checkpoints and exact resume, logging.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass, field

import torch

import time

from ...errors import UserError
from ...runtime import Dist, freeze, join_process_group, pick_dtype, process_device, seed_everything
from .objectives import ALGORITHMS
from .rollout import RolloutConfig, RolloutSource, load_rl_records


@dataclass
class RewardConfig:
    rules: dict = field(default_factory=lambda: {"answer": 1.0})  # rule -> weight (empty: no rules)
    rule_weight: float = 1.0
    reward_model: str | None = None  # a minimind reward model checkpoint
    reward_model_weight: float = 1.0
    external_reward_model: str | None = None  # a transformers folder
    external_weight: float = 1.0
    trust_remote_code: bool = False
    agent: bool = False  # score tool-using trajectories (reward/tools.py) instead of the rules; set from RolloutConfig
    needed_call_weight: float = 0.0  # --agent: reward for calling the tool the task needs (reward/tools.py)


@dataclass
class RLConfig:
    algo: str = "grpo"
    init: str = ""  # the SFT checkpoint: the policy's start and the frozen reference
    data: str = ""  # RL prompts JSONL
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    beta: float = 0.02  # KL strength
    eps_low: float = 0.2
    eps_high: float = 0.2
    level: str = "token"  # loss normalisation: token | sequence
    gamma: float = 1.0  # PPO
    lam: float = 0.95  # PPO
    value_coef: float = 0.5  # PPO
    rollouts: int = 50  # how many rollouts to train on (optimizer steps = rollouts x ppo_epochs x minibatches)
    eval_data: str | None = None  # held-out tasks JSONL: accuracy before and after
    eval_limit: int | None = None
    eval_prompts: str | None = None  # held-out RL prompts: the run's own reward on them before and after
    on_bad_record: str = "error"


def build_reward(rc: RewardConfig, think: bool, device):
    """The reward mix. With `rc.agent` the environment's trajectory reward (reward/tools.py) takes the
    place of the rules."""
    from ...reward import RewardMix
    from ...reward.rules import RuleReward

    sources = []
    if rc.agent and rc.rule_weight:
        from ...reward.tools import ToolReward, ToolRewardWeights

        sources.append((ToolReward(ToolRewardWeights(needed=rc.needed_call_weight)), rc.rule_weight))
    elif rc.rules and rc.rule_weight:
        sources.append((RuleReward(rc.rules, think=think), rc.rule_weight))
    if rc.reward_model:
        from ...reward.model import NativeReward

        sources.append((NativeReward(rc.reward_model, device), rc.reward_model_weight))
    if rc.external_reward_model:
        from ...reward.external import ExternalReward

        sources.append((ExternalReward(rc.external_reward_model, device,
                                       trust_remote_code=rc.trust_remote_code), rc.external_weight))
    if not sources:
        raise UserError("no reward: give rule weights (--rules), --reward-model or --external-reward-model")
    return RewardMix(sources)


def build_objective(cfg: RLConfig, hidden_size: int):
    if cfg.algo not in ALGORITHMS:
        raise UserError(f"unknown RL algorithm {cfg.algo!r}; choose one of {', '.join(ALGORITHMS)}")
    t = cfg.rollout.temperature
    if cfg.algo == "ppo":
        return ALGORITHMS["ppo"](hidden_size, t, cfg.beta, cfg.eps_high, cfg.gamma, cfg.lam, cfg.value_coef,
                                 level=cfg.level)
    if cfg.algo == "spo":
        return ALGORITHMS["spo"](t, cfg.beta, level=cfg.level)
    if cfg.algo == "cispo":
        return ALGORITHMS["cispo"](t, cfg.beta, cfg.eps_high, level=cfg.level)
    return ALGORITHMS["grpo"](t, cfg.beta, cfg.eps_low, cfg.eps_high, cfg.level)


def engine_sampler(model, tok):
    """The generation engine as the rollout source wants it (see RolloutSource.__init__): all
    prompts go to the engine at once (continuous batching), each row with its own seed."""
    from ...infer.engine import Engine, SamplingParams

    # decodes with the model's own weights: each rollout sees the latest policy. 64 rows at once (a
    # rollout's default 8 prompts x 8), so a group is not split as rows finish one by one: with the
    # engine's shared prefill a rollout of tool prompts sampled 2.06x faster than in rows of 16 with a
    # prefill per row (bench/RESULTS.md, "RL groups share their prefill")
    engine = Engine(model, tok, max_batch=64)

    def generate(prompts, temperature, max_new_tokens, seeds, suppress_ids):
        # temperature only: top-k / top-p would make the sampled distribution differ from the
        # softmax(z / tau) the objectives differentiate (see losses.py)
        params = [SamplingParams(temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                 seed=seed, suppress_ids=tuple(suppress_ids)) for seed in seeds]
        return [(r.tokens, r.finish_reason) for r in engine.generate(prompts, params)]

    return generate


def _name(metric: str) -> str:
    return metric[4:] if metric.startswith("acc/") else metric


def heldout_evaluator(tok, path, limit, think: bool):
    """model -> {"acc/<family>": accuracy} on a held-out tasks file (read once)."""
    from ...eval.tasks import evaluate_tasks, load_heldout

    records = load_heldout(path, limit)

    def evaluate(model) -> dict:
        res = evaluate_tasks(model, tok, records, think=think)
        return {f"acc/{k}": v["accuracy"] for k, v in res["families"].items()}

    return evaluate


def heldout_reward_evaluator(tok, records: list[dict], reward, rollout: RolloutConfig):
    """model -> {"eval_reward": mean reward of one reply per held-out prompt}. The seeds are fixed, so
    two evaluations differ only by the model."""
    from .rollout import sample_and_score

    def evaluate(model) -> dict:
        was = model.training
        model.eval()
        s = sample_and_score(records, tok, engine_sampler(model, tok), reward, 1, rollout.temperature,
                             rollout.max_new_tokens, seed=424_242_000, think=rollout.think, agent=rollout.agent,
                             max_tool_rounds=rollout.max_tool_rounds, max_len=model.config.max_position_embeddings)
        model.train(was)
        return {"eval_reward": sum(s["rewards"]) / len(s["rewards"])}

    return evaluate


def train_rl(cfg: RLConfig, train) -> dict:
    """Run RL. `train` is the engine's TrainConfig (steps and grad_accum are set here)."""
    from ...checkpoint import load_checkpoint
    from ..engine import Trainer

    started = time.monotonic()
    d = Dist.from_env()
    device = process_device(d, train.device)
    try:
        seed_everything(train.seed)
        policy, tok = load_checkpoint(cfg.init)
        policy.train()
        ref = freeze(copy.deepcopy(policy))
        reward = build_reward(dataclasses.replace(cfg.reward, agent=cfg.rollout.agent), cfg.rollout.think, device)
        records = load_rl_records(cfg.data, cfg.on_bad_record, need_gt=reward.needs_gt())
        join_process_group(d, device)
        objective = build_objective(cfg, policy.config.hidden_size)
        rollout = cfg.rollout if objective.uses_groups else dataclasses.replace(cfg.rollout, group_size=1)
        train = dataclasses.replace(train, steps=cfg.rollouts * rollout.steps_per_rollout,
                                    grad_accum=rollout.micro_batches,
                                    extra={**train.extra, "rl": dataclasses.asdict(cfg)})
        dtype = pick_dtype(train.dtype, device)
        policy.to(device)
        ref.to(device=device, dtype=dtype if dtype != torch.float32 else None)
        source = RolloutSource(records, tok, policy, ref, objective, reward, engine_sampler(policy, tok), rollout,
                               seed=train.seed, rank=d.rank, world_size=d.world_size, dtype=dtype)
        evaluators, before = [], {}
        if cfg.eval_data:
            evaluators.append(heldout_evaluator(tok, cfg.eval_data, cfg.eval_limit, rollout.think))
        if cfg.eval_prompts:
            held = load_rl_records(cfg.eval_prompts, cfg.on_bad_record, need_gt=reward.needs_gt())
            evaluators.append(heldout_reward_evaluator(tok, held, reward, rollout))
        if evaluators and d.is_main and not (train.resume or train.resume_from):
            for evaluate in evaluators:
                before.update(evaluate(policy))
            print("held-out before: " + ", ".join(f"{_name(k)} {v:.1%}" if k.startswith("acc/") else
                                                  f"{_name(k)} {v:.4f}" for k, v in before.items()))
        run_config = {"stage": cfg.algo, "model": policy.config.to_dict(), "data": cfg.data, "argv": sys.argv[1:]}
        if d.is_main and train.progress:
            print(f"{cfg.algo}: {len(records)} prompts, {cfg.rollouts} rollouts x {rollout.prompts_per_rollout} "
                  f"prompts x {rollout.group_size if objective.uses_groups else 1} samples, "
                  f"{train.steps} optimizer steps, lr {train.lr:g} -> {train.out_dir}")
        trainer = Trainer(policy, objective, source, tok, train, run_config=run_config, dist_info=d, device=device,
                          started_at=started, evaluators=evaluators, initial_metrics=before)
        final = trainer.fit()
        if before:
            final.update({f"{k}_before": v for k, v in before.items()})
            print("held-out: " + ", ".join(f"{_name(k)} {before[k]:.1%} -> {final[k]:.1%}" if k.startswith("acc/")
                                           else f"{_name(k)} {before[k]:.4f} -> {final[k]:.4f}"
                                           for k in before if k in final))
        return final
    finally:
        import torch.distributed as dist

        if d.enabled and dist.is_initialized():
            dist.destroy_process_group()
