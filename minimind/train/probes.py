"""Probes: a few greedy generations at every evaluation, so a user sees the model learn.

`--probe-prompts FILE` on any training command: FILE is plain text, one prompt per line (blank lines
and lines starting with '#' skipped). A pretraining run continues each prompt as raw text; the other
stages (SFT, LoRA, DPO, ...) answer it as a user turn of the chat template. At every evaluation
(`--eval-every`, and the final one) the replies are printed and logged to metrics.jsonl as
`probe/<i>` (text; the numeric loggers skip them). Generation goes through the one engine, greedy.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

MAX_PROBES = 16


def load_probes(path) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--probe-prompts {path}: file not found (one prompt per line)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"--probe-prompts {path}: not UTF-8 text (one prompt per line)") from None
    prompts = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if not prompts:
        raise UserError(f"--probe-prompts {path}: no prompts (one per line)")
    if len(prompts) > MAX_PROBES:
        raise UserError(f"--probe-prompts {path}: {len(prompts)} prompts; at most {MAX_PROBES} (they run at "
                        f"every evaluation)")
    return prompts


def probe_evaluator(tok, prompts: list[str], chat: bool, max_new_tokens: int = 32, say=print):
    """model -> {"probe/<i>": greedy reply to prompt i}; each reply also printed through `say`."""
    from ..infer.engine import Engine, SamplingParams
    from ..tokenizer import render_chat

    if chat:
        ids = [render_chat(tok, [{"role": "user", "content": q}], add_generation_prompt=True)[0] for q in prompts]
    else:
        ids = [tok.encode(q) for q in prompts]

    def evaluate(model) -> dict:
        results = Engine(model, tok).generate(ids, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
        out = {}
        for i, (q, r) in enumerate(zip(prompts, results)):
            out[f"probe/{i}"] = r.text
            if say:
                say(f"  probe {q!r} -> {r.text!r}")
        return out

    return evaluate
