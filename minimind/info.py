"""`minimind info`: parameter counts and training FLOPs of a preset or a checkpoint."""

from __future__ import annotations

import json


def cmd_info(args):
    from .checkpoint import check_checkpoint_dir
    from .config import ModelConfig, get_preset

    if args.checkpoint:
        cfg = ModelConfig.load(check_checkpoint_dir(args.checkpoint) / "config.json")
    else:
        cfg = get_preset(args.preset)
    c = cfg.param_counts()
    rows = [("preset", cfg.name), ("layers", cfg.num_hidden_layers), ("hidden", cfg.hidden_size),
            ("heads / kv heads / head_dim", f"{cfg.num_attention_heads} / {cfg.num_key_value_heads} / {cfg.head_dim}"),
            ("intermediate", cfg.moe_intermediate_size if cfg.is_moe else cfg.intermediate_size),
            ("experts", f"{cfg.num_experts} routed (top-{cfg.num_experts_per_tok}), {cfg.num_shared_experts} shared"
             if cfg.is_moe else "dense"),
            ("total parameters", f"{c['total']:,} ({c['total'] / 1e6:.2f}M)"),
            ("active parameters / token", f"{c['active']:,} ({c['active'] / 1e6:.2f}M)"),
            ("embedding parameters", f"{c['embedding']:,} ({'tied' if cfg.tie_word_embeddings else 'untied'})"),
            (f"training FLOPs / token (seq {args.seq_len})", f"{cfg.flops_per_token(args.seq_len) / 1e6:.1f}M")]
    if args.json:
        print(json.dumps({**c, "flops_per_token": cfg.flops_per_token(args.seq_len), "config": cfg.to_dict()}))
        return
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


def add_commands(sub) -> None:
    from .cli import positive_int
    from .config import PRESETS

    s = sub.add_parser("info", help="parameter counts and FLOPs of a preset or checkpoint")
    s.add_argument("--preset", default="minimind2-small", help=f"one of: {', '.join(PRESETS)}")
    s.add_argument("--checkpoint", help="describe this checkpoint instead of a preset")
    s.add_argument("--seq-len", type=positive_int, default=512, help="sequence length for the FLOPs estimate")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_info)
