"""Perplexity against context length, with and without YaRN (`minimind eval length`).

The documents of a text file are laid end to end, each followed by the end-of-text token (the
stream pretraining read), and the first `tokens` tokens of that stream are cut into windows of
L tokens for every length L asked. Each window predicts all its tokens, so every L scores the same
text and only the context available to each prediction changes:

    loss(L)        = -(1/N) sum over windows w, positions 1 <= t <= L of log p(x_{w,t} | x_{w,<t})
    loss_beyond(L) = the same mean over positions t > L_train only (what a model trained at
                     L_train has never seen)

RoPE (Su et al. 2021) rotates query/key pair i by angle t * theta_i. A model trained on L_train
positions has seen, in each pair whose wavelength 2 pi / theta_i exceeds L_train, only angles
below L_train * theta_i; past L_train those pairs show angles it never saw and the loss rises.
YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models")
divides theta_i by the factor s in those pairs (interpolation: angles stay in the trained range),
keeps theta_i in the fast pairs that completed many turns in training (beta_fast = 32 turns;
they only ever carried local information), blends between them with a ramp, and scales the
attention logits by (0.1 ln s + 1)^2 to undo the entropy change of a longer softmax. model.py's
`set_rope_scaling` builds those tables; here s defaults to max(L) / L_train and the original
length to L_train, both without any fine-tuning at the longer length. A fixed s also stretches the
short range (every window pays for the longest one); "dynamic" YaRN uses s = L / L_train for a
window of L tokens (plain RoPE up to L_train), as "dynamic" RoPE scalings follow the current length.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import UserError
from .loglik import Row, ScoringModel, score_rows, summarize

POSITION_BINS = 32  # the loss-by-position curve of the longest window, in this many bins


def token_stream(tok, path, n_tokens: int) -> list[int]:
    """The first n_tokens of the file's documents, each followed by end-of-text."""
    from ..data.records import iter_records

    out, batch = [], []
    for _, rec in iter_records(path, "pretrain"):
        batch.append(rec["text"])
        if len(batch) == 256:
            out += [t for ids in tok.encode_batch(batch) for t in ids + [tok.eot_id]]
            batch = []
            if len(out) > n_tokens:
                break
    if batch:
        out += [t for ids in tok.encode_batch(batch) for t in ids + [tok.eot_id]]
    return out[:n_tokens + 1]  # + 1: the last window's last target


def yarn(factor: float, original_len: int) -> dict | None:
    """The rope_scaling dict for YaRN by `factor` (None, plain RoPE, when there is nothing to stretch)."""
    if factor <= 1.0:
        return None
    return {"type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original_len)}


def curve(sm: ScoringModel, stream: list[int], lengths: list[int], train_len: int, batch_size: int,
          scaling, progress: bool = False, label: str = "") -> list[dict]:
    """One point per length, the RoPE tables set by scaling(L) (a rope_scaling dict or None):
    loss/ppl over all positions, and over the positions past train_len."""
    points = []
    for L in lengths:
        setting = scaling(L)
        sm.model.model.set_rope_scaling(setting, max_positions=L)
        n_win = (len(stream) - 1) // L
        rows = [Row(stream[w * L:(w + 1) * L + 1], [False] + [True] * L) for w in range(n_win)]
        res = score_rows(sm, rows, max(1, batch_size * min(lengths) // L), progress=progress,
                         desc=f"{label} L={L}")
        nll = -sum(r.total for r in res)
        beyond = -sum(float(r.logprobs[train_len:].sum()) for r in res)  # logprobs[t-1] is position t
        n_beyond = n_win * max(0, L - train_len)
        point = {"length": L, "windows": n_win, "yarn_factor": setting["factor"] if setting else 1.0,
                 **summarize(nll, n_win * L, 0)}
        del point["bpb"], point["bytes"]
        if n_beyond:
            point["loss_beyond"] = beyond / n_beyond
            point["ppl_beyond"] = summarize(beyond, n_beyond, 0)["ppl"]
        if L == max(lengths):
            point["position_loss"] = _position_loss(res, L)
        points.append(point)
    return points


def _position_loss(res, L: int) -> list[dict]:
    """Mean loss in POSITION_BINS equal bins of positions 1..L (over all windows)."""
    import torch

    nll = -torch.stack([r.logprobs for r in res]).mean(0)  # (L,)
    size = max(1, L // POSITION_BINS)
    return [{"start": a + 1, "end": min(a + size, L), "loss": float(nll[a:a + size].mean())}
            for a in range(0, L, size)]


CURVES = {"rope": "RoPE", "yarn": "YaRN", "yarn_dynamic": "YaRN dynamic"}


def evaluate_length(sm: ScoringModel, path, lengths: list[int], train_len: int, yarn_factor: float | None = None,
                    original_len: int | None = None, n_tokens: int = 16384, batch_size: int = 8,
                    progress: bool = False) -> dict:
    """Three curves over the same tokens: plain RoPE; YaRN with one factor s for every length (what
    rope_scaling in config.json does; default s = longest length / original length); and YaRN with
    s = L / original length at each length L ("dynamic": the factor follows the current length),
    which leaves lengths up to the original one untouched.

    -> {"lengths", "train_length", "yarn": {...}, "tokens", "curves": {"rope"|"yarn"|"yarn_dynamic": [points]}}"""
    lengths = sorted(set(lengths))
    if not lengths or lengths[0] < 2:
        raise UserError(f"--lengths {lengths}: need lengths of at least 2 tokens")
    n_tokens = max(n_tokens, lengths[-1])
    stream = token_stream(sm.tok, path, n_tokens)
    if len(stream) < lengths[-1] + 1:
        raise UserError(f"{path}: only {len(stream)} tokens of text, fewer than the longest length "
                        f"{lengths[-1]} + 1; use a bigger file or shorter --lengths")
    original_len = original_len or train_len
    factor = yarn_factor or max(1.0, lengths[-1] / original_len)
    if factor < 1:
        raise UserError(f"--yarn-factor {factor:g}: YaRN stretches positions, so the factor must be >= 1")
    fixed = {"type": "yarn", "factor": float(factor), "original_max_position_embeddings": int(original_len)}
    scalings = {"rope": lambda L: None, "yarn": lambda L: fixed,
                "yarn_dynamic": lambda L: yarn(L / original_len, original_len)}
    saved = sm.model.config.rope_scaling
    try:
        curves = {k: curve(sm, stream, lengths, train_len, batch_size, f, progress, k) for k, f in scalings.items()}
    finally:
        sm.model.model.set_rope_scaling(saved)
    return {"lengths": lengths, "train_length": train_len, "tokens": (len(stream) - 1) // lengths[-1] * lengths[-1],
            "yarn": fixed, "curves": curves, "file": str(path)}


def format_length(res: dict) -> str:
    T, c = res["train_length"], res["curves"]
    names = [CURVES[k] for k in c]
    w = 13 * len(c)
    lines = [f"{'':>7} {'perplexity':^{w}}  {f'perplexity past position {T}':^{w}}",
             f"{'length':>7} " + " ".join(f"{n:>12}" for n in names) + "  " + " ".join(f"{n:>12}" for n in names)]
    for i, L in enumerate(res["lengths"]):
        ppl = " ".join(f"{c[k][i]['ppl']:>12.3f}" for k in c)
        beyond = " ".join(f"{c[k][i]['ppl_beyond']:>12.3f}" if "ppl_beyond" in c[k][i] else f"{'-':>12}" for k in c)
        lines.append(f"{L:>7} {ppl}  {beyond}")
    y = res["yarn"]
    lines.append(f"trained at {T} tokens; YaRN factor {y['factor']:g} (dynamic: length / "
                 f"{y['original_max_position_embeddings']}), original length {y['original_max_position_embeddings']}; "
                 f"{res['tokens']} tokens of {res['file']} per length")
    return "\n".join(lines)


def plot_length(res: dict, out) -> Path:
    """Two panels: ppl against length (log2 x), and loss against position in the longest window
    (RoPE and YaRN with the fixed factor, which dynamic YaRN equals at the longest length)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("the plot needs matplotlib: pip install matplotlib (or pass --no-plot)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for key, pts in res["curves"].items():
        label = f"YaRN x{res['yarn']['factor']:g}" if key == "yarn" else CURVES[key]
        ax1.plot([p["length"] for p in pts], [p["ppl"] for p in pts], "o-", label=label)
        if key != "yarn_dynamic":  # at the longest length it is the fixed factor's curve again
            pos = pts[-1]["position_loss"]
            ax2.plot([(b["start"] + b["end"]) / 2 for b in pos], [b["loss"] for b in pos], label=label)
    for ax in (ax1, ax2):
        ax.axvline(res["train_length"], color="gray", ls="--", lw=1, label="training length")
        ax.grid(alpha=0.3)
        ax.legend()
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("context length (tokens)"), ax1.set_ylabel("perplexity")
    ax2.set_xlabel(f"position in a {res['lengths'][-1]}-token window"), ax2.set_ylabel("loss (nats/token)")
    fig.suptitle("perplexity vs context length")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def default_lengths(train_len: int) -> list[int]:
    """Doublings from min(256, train_len) up to 8x the training length, and the training length."""
    out, L = {train_len}, min(256, train_len)
    while L <= 8 * train_len:
        out.add(L)
        L *= 2
    return sorted(out | {8 * train_len})


def run_eval_length(args) -> dict:
    from .loglik import load_scoring_model, training_length

    sm = load_scoring_model(args.checkpoint, args.device, args.dtype)
    train_len = args.train_length or training_length(args.checkpoint)
    if train_len is None:
        raise UserError(f"{args.checkpoint}: the training length is not recorded in the checkpoint; pass --train-length")
    lengths = args.lengths or default_lengths(train_len)
    res = evaluate_length(sm, args.data, lengths, train_len, args.yarn_factor, args.original_length,
                          args.tokens, args.batch_size, progress=not args.no_progress)
    print(format_length(res))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "length.json").write_text(json.dumps(res, indent=1))
    msg = f"wrote {out / 'length.json'}"
    if not args.no_plot:
        msg += f", {plot_length(res, out / 'length.png')}"
    print(msg, file=sys.stderr)
    return res
