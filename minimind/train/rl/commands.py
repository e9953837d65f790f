"""`minimind grpo | ppo | spo | cispo` (RL from AI feedback) and `minimind reward train`.

The four RL commands share every flag; they differ in the objective (objectives.py has the table).
`--agent` makes any of them agentic RL: responses are tool-using trajectories (agent.py) scored by
the environment (reward/tools.py); the objectives do not change.
"""

from __future__ import annotations

import math

from ...errors import UserError

ALGO_HELP = {
    "grpo": "RL with group-relative advantages (several samples per prompt, no critic)",
    "ppo": "RL with a value head and GAE (one sample per prompt)",
    "spo": "RL with a per-prompt baseline tracked across rollouts (one sample per prompt, no critic)",
    "cispo": "RL with clipped importance weights that keep every token's gradient",
}


def parse_rules(text: str) -> dict:
    """'answer=1,format=0.2' -> {"answer": 1.0, "format": 0.2}; '' or 'none' -> {}."""
    if not text or text == "none":
        return {}
    out = {}
    for part in text.split(","):
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError:
            raise UserError(f"--rules {text!r}: weight {w!r} of {name!r} is not a number") from None
    return out


def cmd_rl(args):
    from ..budget import parse_duration
    from ..engine import TrainConfig
    from .rollout import RolloutConfig
    from .train import RewardConfig, RLConfig, train_rl

    for name in ("prompts_per_rollout", "group_size", "max_new_tokens", "rollouts", "ppo_epochs", "minibatches",
                 "micro_batches", "max_tool_rounds"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.temperature <= 0:
        raise UserError(f"--temperature must be > 0 for RL sampling, got {args.temperature}")
    if args.needed_call_weight < 0:
        raise UserError(f"--needed-call-weight must be >= 0, got {args.needed_call_weight:g}")
    group = args.group_size if args.algo in ("grpo", "cispo") else 1
    rows = args.prompts_per_rollout * group
    if rows < args.minibatches * args.micro_batches:
        raise UserError(f"a rollout has {rows} responses: too few for --minibatches {args.minibatches} x "
                        f"--micro-batches {args.micro_batches}")
    cfg = RLConfig(
        algo=args.algo, init=args.init, data=args.data,
        rollout=RolloutConfig(args.prompts_per_rollout, args.group_size, args.max_new_tokens, args.temperature,
                              args.ppo_epochs, args.minibatches, args.micro_batches,
                              not args.no_dynamic_sampling, args.max_refills, args.think == "on",
                              args.agent, args.max_tool_rounds),
        reward=RewardConfig(parse_rules(args.rules), args.rule_weight, args.reward_model, args.reward_model_weight,
                            args.external_reward_model, args.external_weight, args.trust_remote_code,
                            needed_call_weight=args.needed_call_weight),
        beta=args.beta, eps_low=args.eps_low, eps_high=args.eps_high, level=args.level, gamma=args.gamma,
        lam=args.lam, value_coef=args.value_coef, rollouts=args.rollouts, eval_data=args.eval_data,
        eval_limit=args.eval_limit, eval_prompts=args.eval_prompts, on_bad_record=args.on_bad_record)
    train = TrainConfig(
        out_dir=args.out, lr=args.lr, min_lr_ratio=args.min_lr_ratio, warmup=args.warmup, schedule=args.schedule,
        weight_decay=args.weight_decay, grad_clip=args.grad_clip, embed_rows=args.embed_rows, dtype=args.dtype,
        device=args.device,
        seed=args.seed, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        eval_every=args.eval_every, time_budget=parse_duration(args.time_budget) if args.time_budget else 0.0,
        resume_from=args.resume_from or "", log_every=args.log_every, resume=args.resume,
        stop_after=args.stop_after, progress=not args.no_progress, wandb=args.wandb, swanlab=args.swanlab,
        tensorboard=args.tensorboard)
    from ...checkpoint import resolve_checkpoint

    m = train_rl(cfg, train)
    keys = [k for k in ("reward", "kl_k1", "clip_frac", "response_len") if k in m]
    print("done: " + ", ".join(f"{k} {m[k]:.4g}" for k in keys) + f"; checkpoint: {resolve_checkpoint(args.out)}")


def add_rl_command(sub, algo: str) -> None:
    p = sub.add_parser(algo, help=ALGO_HELP[algo],
                       description=f"{ALGO_HELP[algo]}. Starts from an SFT checkpoint (--init), which is also "
                                   "the frozen KL reference, and samples answers to the prompts of --data "
                                   "({'conversations': [...], 'gt': ...} per line, the public rlaif format).")
    p.set_defaults(func=cmd_rl, algo=algo)
    p.add_argument("--init", required=True, help="SFT checkpoint (or run) directory")
    p.add_argument("--data", required=True, help="RL prompts JSONL (rlaif format; 'gt' needed by --rules answer)")
    p.add_argument("--out", required=True, help="run directory: checkpoint/, metrics.jsonl")
    p.add_argument("--eval-data", help="held-out tasks JSONL (eval/heldout.jsonl): accuracy before and after")
    p.add_argument("--eval-limit", type=int, default=None, help="at most this many held-out records per family")
    p.add_argument("--eval-prompts", help="held-out RL prompts JSONL (the --data format): the run's own reward "
                                          "of one reply per prompt (fixed seeds), before and at every evaluation")
    r = p.add_argument_group("rollouts")
    r.add_argument("--rollouts", type=int, default=50, help="rollouts to train on (default 50)")
    r.add_argument("--prompts-per-rollout", type=int, default=8, help="prompts per rollout, per process (default 8)")
    r.add_argument("--group-size", type=int, default=8,
                   help="samples per prompt for grpo/cispo (default 8; ppo and spo use 1)")
    r.add_argument("--max-new-tokens", type=int, default=96, help="longest response (default 96)")
    r.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature; the log-probs of the loss use the same one (default 1)")
    r.add_argument("--ppo-epochs", type=int, default=1, help="passes over each rollout (default 1)")
    r.add_argument("--minibatches", type=int, default=1,
                   help="optimizer steps per pass (default 1); >1 (or --ppo-epochs >1) makes clipping act")
    r.add_argument("--micro-batches", type=int, default=1, help="gradient-accumulation chunks per step")
    r.add_argument("--no-dynamic-sampling", action="store_true",
                   help="keep groups whose rewards are all equal (they carry no signal)")
    r.add_argument("--max-refills", type=int, default=2, help="dynamic sampling: extra sampling rounds (default 2)")
    r.add_argument("--think", choices=["on", "off"], default="off", help="sample with the <think> block open")
    r.add_argument("--agent", action="store_true",
                   help="agentic RL: each response is a tool-using trajectory (the model calls the tools its "
                        "prompt offers, reads their results, answers); rewarded by the environment: the answer "
                        "states gt, calls are valid, small penalties for unfinished trajectories and wasted calls "
                        "(replaces --rules; data: agent_rl.jsonl)")
    r.add_argument("--max-tool-rounds", type=int, default=2, help="--agent: tool rounds per trajectory (default 2)")
    r.add_argument("--needed-call-weight", type=float, default=0.0,
                   help="--agent: reward for calling the tool the task needs (the prompt's 'tool' field), on top "
                        "of the answer's 0.9; default 0 (answering from memory is as good as looking it up)")
    o = p.add_argument_group("objective")
    o.add_argument("--beta", type=float, default=0.02, help="KL strength (default 0.02)")
    o.add_argument("--eps-low", type=float, default=0.2, help="clip range below 1 (grpo, ppo)")
    o.add_argument("--eps-high", type=float, default=0.2, help="clip range above 1 (grpo, ppo; cispo's cap)")
    o.add_argument("--level", choices=["token", "sequence"], default="token",
                   help="loss normalisation: every token weighs the same (default) or every sequence")
    o.add_argument("--gamma", type=float, default=1.0, help="ppo: discount (default 1)")
    o.add_argument("--lam", type=float, default=0.95, help="ppo: GAE lambda (default 0.95)")
    o.add_argument("--value-coef", type=float, default=0.5, help="ppo: value-loss weight (default 0.5)")
    w = p.add_argument_group("reward")
    w.add_argument("--rules", default="answer=1",
                   help="rule rewards and weights: answer, format, length, e.g. 'answer=1,length=0.1'; 'none'")
    w.add_argument("--rule-weight", type=float, default=1.0, help="weight of the rules in the mix")
    w.add_argument("--reward-model", help="a minimind reward model (from `minimind reward train`)")
    w.add_argument("--reward-model-weight", type=float, default=1.0)
    w.add_argument("--external-reward-model", help="a transformers reward model folder")
    w.add_argument("--external-weight", type=float, default=1.0)
    w.add_argument("--trust-remote-code", action="store_true",
                   help="allow the external model's own code (needed for get_score models like InternLM2-Reward)")
    t = p.add_argument_group("optimisation and run")
    t.add_argument("--lr", type=float, default=1e-5, help="learning rate (default 1e-5)")
    t.add_argument("--min-lr-ratio", type=float, default=0.1)
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("--schedule", default="constant", choices=["cosine", "wsd", "constant"])
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--grad-clip", type=float, default=1.0)
    t.add_argument("--embed-rows", default="all", choices=["all", "seen"],
                   help="seen: each step changes only the embedding rows of tokens its rollouts read "
                        "(docs/training.md); default all")
    t.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16, fp16 (GPU), fp32")
    t.add_argument("--device", default="auto")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--save-every", type=int, default=0, help="optimizer steps between checkpoints")
    t.add_argument("--keep-checkpoints", type=int, default=3, help="step checkpoints kept (0: all)")
    t.add_argument("--eval-every", type=int, default=0,
                   help="optimizer steps between held-out evaluations (--eval-data; 0: only before and after)")
    t.add_argument("--time-budget", default=None, help="stop on time, e.g. 10m (the schedule follows the budget)")
    t.add_argument("--resume-from", default=None, help="continue from this checkpoint directory")
    t.add_argument("--log-every", type=int, default=1)
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint exactly where it stopped")
    t.add_argument("--stop-after", type=int, default=0, help="stop with a checkpoint after this step")
    t.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    t.add_argument("--no-progress", action="store_true")
    t.add_argument("--wandb", action="store_true")
    t.add_argument("--swanlab", action="store_true")
    t.add_argument("--tensorboard", action="store_true")


# ----------------------------------------------------------------------------- reward model

def cmd_reward_train(args):
    from ...checkpoint import load_checkpoint, resolve_checkpoint
    from ...data.loader import DPOLoader
    from ...reward.model import BradleyTerry, LikelihoodBradleyTerry, RewardModel, pair_accuracy, save_reward_meta
    from ...runtime import Dist, seed_everything
    from ..dpo import preference_accuracy
    from ..run import prepared_data, run_config, run_training

    if not args.init:
        raise UserError("reward train: pass --init CHECKPOINT (an SFT model: its trunk starts the reward model)")
    if args.lm_coef < 0:
        raise UserError(f"reward train: --lm-coef must be >= 0, got {args.lm_coef:g}")
    if args.head == "likelihood" and args.lm_coef:
        raise UserError("reward train: --lm-coef is for --head scalar (a likelihood reward model is a language "
                        "model already); drop it")
    if not (math.isfinite(args.beta) and args.beta > 0):
        raise UserError(f"reward train: --beta must be > 0, got {args.beta:g}")
    if args.lr is None:
        args.lr = 1e-4 if args.head == "scalar" else 3e-5
    cfg = run_config(args, "reward")
    seed_everything(args.seed)
    lm, tok = load_checkpoint(args.init)
    if args.lm_coef and not lm.config.tie_word_embeddings:
        raise UserError("reward train: --lm-coef needs a model with tied embeddings (tie_word_embeddings); "
                        "pass --lm-coef 0")

    def loader(path):
        data = prepared_data(path, tok, "dpo", cfg.max_seq_len, cfg.on_bad_record, cfg.cache_dir, progress=False,
                             verbose=False)
        return DPOLoader(data, cfg.train.batch_size, cfg.max_seq_len)

    held_out = loader(args.eval_data) if args.eval_data else None
    if held_out is not None:  # the bar: how often the --init model's own likelihood already ranks the pair right
        own = preference_accuracy(lm, held_out)
        if Dist.from_env().is_main:
            print(f"held-out pairs the --init model's own likelihood ranks right (sum of the reply's token "
                  f"log-probs): {own['accuracy']:.1%} ({own['pairs']} pairs)")
    if args.head == "scalar":
        objective, model = BradleyTerry(tok.pad_id, tok.encode("\n"), args.lm_coef), RewardModel.from_causal_lm(lm)
        del lm
    else:
        objective, model = LikelihoodBradleyTerry(args.beta), lm
    m = run_training(cfg, objective, data_kind="dpo", model_and_tok=(model, tok))

    ckpt = resolve_checkpoint(args.out)
    train_acc = pair_accuracy(objective, model, loader(args.data))
    # rewards are centred on the training pairs' mean score (likelihood: the chosen replies'; reward/model.py)
    center = train_acc["score_mean"] if args.head == "scalar" else train_acc["chosen_mean"]
    save_reward_meta(ckpt, center, objective.kind, args.beta if args.head == "likelihood" else None)
    line = f"done: loss {m['loss']:.4g}, train pair accuracy {train_acc['accuracy']:.1%}"
    if held_out is not None:
        held = pair_accuracy(objective, model, held_out)
        line += (f", held-out pair accuracy {held['accuracy']:.1%} ({held['pairs']} pairs; the --init model's "
                 f"own likelihood: {own['accuracy']:.1%})")
    print(line + f"; reward model: {ckpt} (use it with --reward-model)")


def add_reward_command(sub) -> None:
    from ...cli import command_group
    from ..run import add_train_args

    g = command_group(sub, "reward", "reward models for RL")
    p = g.add_parser("train", help="fit a Bradley-Terry reward model on preference pairs (the DPO format)",
                     description="Train a reward model from the --init SFT model on {'chosen', 'rejected'} pairs: "
                                 "a scalar head on the last token (--head scalar, exported to transformers as "
                                 "LlamaForSequenceClassification) or the reply's mean token log-probability "
                                 "under a fine-tuned copy of the model (--head likelihood, exported as "
                                 "LlamaForCausalLM). Prints held-out pair accuracy with --eval-data.")
    add_train_args(p, "sft")
    p.add_argument("--head", choices=["scalar", "likelihood"], default="scalar",
                   help="scalar: r = w . h at the last token (default); likelihood: r = beta * mean log p(reply) "
                        "(SimPO's reward; it starts from the model's own ranking of the replies, which a scalar "
                        "head has to learn anew - on the built-in pairs it ranks far more held-out pairs right, "
                        "see docs/rl.md)")
    p.add_argument("--beta", type=float, default=5.0,
                   help="--head likelihood: the reward's scale, r = beta * mean token log-prob. Default 5")
    p.add_argument("--lm-coef", type=float, default=0.0,
                   help="--head scalar: weight of the chosen replies' language-modelling loss added to the "
                        "Bradley-Terry loss (keeps the trunk a language model while the head is fitted; GRM, "
                        "Yang et al. 2024). Default 0")
    for a in p._actions:  # the default lr depends on --head
        if a.dest == "lr":
            a.help = "peak learning rate (default 1e-4 for --head scalar, 3e-5 for --head likelihood)"
    p.set_defaults(func=cmd_reward_train, lr=None, batch_size=16, warmup=10, weight_decay=0.0, varying_shapes=True)


def add_commands(sub) -> None:
    for algo in ALGO_HELP:
        add_rl_command(sub, algo)
    add_reward_command(sub)
