"""A domain language model for the recogniser, built from the questions of a conversation corpus.

A general English language model spreads its probability over everything anyone says; the questions
a small model trained on the built-in corpus can answer are a narrow domain ("what is the capital of
...", "how much is ... plus ..."). An n-gram model estimated on those questions - in the words a
speaker says (text.spoken) - makes the recogniser prefer them, which is where most of its word-error
rate goes (docs/voice.md has the numbers).

The model is a trigram with Katz-style absolute discounting and back-off, estimated by pocketsphinx's
own ARPA writer (pocketsphinx.lm.ArpaBoLM):

    P(w | u v) = (c(u v w) - D) / c(u v)            if c(u v w) > 0
               = alpha(u v) * P(w | v)              otherwise (mass D freed by discounting, renormalised)

The wake phrase, as one word ("hey_mind"), is put before the sentences, so "hey mind, what is ..." is
one in-domain utterance and the recogniser itself decides whether it began with the wake phrase: a
likelihood-ratio test between "wake phrase + question" and "question" whose prior odds are the
threshold.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..errors import UserError
from .text import spoken

TRAIN_SKIP = ("eval",)  # held-out files of a `minimind data synth` directory never shape the model


def _user_turns(path: Path):
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{i}: not JSON ({e.msg}); --lm takes conversation JSONL, "
                                "a text file (one sentence a line) or a directory of them") from None
            for msg in rec.get("conversations") or [] if isinstance(rec, dict) else []:
                if isinstance(msg, dict) and msg.get("role") == "user" and isinstance(msg.get("content"), str):
                    yield msg["content"]


def corpus_sentences(path) -> list[str]:
    """English sentences from a text file (one a line), a conversations JSONL (its user turns) or a
    directory of those (not its eval/ folder), in spoken form, de-duplicated, in a stable order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in (".jsonl", ".txt")
                       and not set(p.relative_to(path).parts[:-1]) & set(TRAIN_SKIP))
    elif path.is_file():
        files = [path]
    else:
        raise UserError(f"--lm {path}: no such file or directory")
    texts = []
    for f in files:
        if f.suffix == ".jsonl":
            texts.extend(_user_turns(f))
        else:
            texts.extend(f.read_text(encoding="utf-8").splitlines())
    out = {spoken(t) for t in texts if t.isascii()}  # the acoustic models here are English
    out.discard("")
    if not out:
        raise UserError(f"--lm {path}: no English sentences found (user turns of conversation JSONL, "
                        "or a text file with one sentence a line)")
    return sorted(out)


def in_vocabulary(sentences: list[str], vocab) -> tuple[list[str], int]:
    """Sentences whose every word has a pronunciation (the recogniser cannot say the others)."""
    keep = [s for s in sentences if all(w in vocab for w in s.split())]
    return keep, len(sentences) - len(keep)


def build_arpa(sentences: list[str], out_path, wake: str | None = None, wake_odds: float = 1.0,
               seed: int = 0) -> Path:
    """Write a trigram ARPA model. With `wake` (a word of the model, e.g. 'hey_mind'), each sentence is
    also written after it, `wake_odds` times on average (1: once with, once without: even prior odds),
    plus the bare wake word (said alone, a pause, then the question)."""
    from pocketsphinx.lm import ArpaBoLM

    rng = random.Random(seed)
    lines = list(sentences)
    if wake:
        whole, frac = divmod(wake_odds, 1.0)
        for s in sentences:
            lines += [f"{wake} {s}"] * (int(whole) + (rng.random() < frac))
        lines += [wake] * max(1, round(wake_odds * len(sentences) / 20))
    lm = ArpaBoLM(text="\n".join(lines), add_start=True, discount_mass=0.5)
    lm.compute()
    with open(out_path, "w", encoding="utf-8") as f:
        lm.write(f)
    return Path(out_path)
