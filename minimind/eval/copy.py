"""In-context copying (`minimind eval copy`): can the model repeat a list it has just read?

Each probe is a token sequence built from whole-word pieces of the model's own vocabulary (" Tokyo",
" carbon", ...), drawn at random, no word twice:

    filler (f words, f in 0..max_filler) + list (L words, L in min..max length) + "\\n" + the same list

Every token of the list's second copy but its first follows a token that occurred once before, in
the first copy, right in front of the token it should predict. A model that copies ("induction heads":
attend to the earlier occurrence of the current token, predict what came after it; Olsson et al.
2022, "In-context Learning and Induction Heads") predicts them; a model that does not is left with a
guess among thousands of words. With f and L random, the distance between the two copies varies,
so a fixed-offset shortcut does not score. Reported, greedy (argmax) and teacher-forced:

    copy accuracy  = hits over tokens 2..L of the second copy / their number
    baseline       = hits over tokens 2..L of the first copy  (the same words, not yet shown)
    copy loss, baseline loss = the mean -log p over the same tokens

Copy accuracy near the baseline means the model cannot quote its context: a question's subject or
operands it has not memorised, a tool call's arguments, a tool result it must restate. Language models
of any real size score above 90%. A transformer learns it abruptly and late (a "phase change"): a
4-layer model on a pure copying task needs thousands of steps, so short runs on templated data
usually show ~0% (bench/RESULTS.md, 2026-12-01).
"""

from __future__ import annotations

import json
import random
import sys

from ..errors import UserError
from .loglik import Row, score_rows


def word_pieces(tok) -> list[int]:
    """Ids of the vocabulary's single-token words: a space then 3+ ASCII letters, which encode back to
    themselves alone (so a sentence of them tokenizes to exactly these ids)."""
    special = set(tok.added_tokens())
    out = []
    for i in range(tok.vocab_size):
        if i in special:
            continue
        s = tok.decode([i])
        if len(s) >= 4 and s[0] == " " and s[1:].isascii() and s[1:].isalpha() and tok.encode(s) == [i]:
            out.append(i)
    return out


def copy_probes(tok, n: int, min_len: int = 4, max_len: int = 16, max_filler: int = 16, seed: int = 0,
                words: list[int] | None = None):
    """n probes -> list of (ids, start of the first copy, start of the second copy, list length)."""
    if not 2 <= min_len <= max_len:
        raise UserError(f"--lengths {min_len}-{max_len}: need 2 <= shortest <= longest")
    words = word_pieces(tok) if words is None else words
    need = max_len + max_filler
    if len(words) < max(need, 50):
        raise UserError(f"the tokenizer has only {len(words)} single-token words (a space then letters); "
                        f"copy probes need at least {max(need, 50)}")
    nl = tok.encode("\n")
    rng = random.Random(seed)
    probes = []
    for _ in range(n):
        L, f = rng.randint(min_len, max_len), rng.randint(0, max_filler)
        drawn = rng.sample(words, L + f)
        filler, items = drawn[:f], drawn[f:]
        ids = [tok.eot_id] + filler + items + nl + items
        probes.append((ids, 1 + f, 1 + f + L + len(nl), L))
    return probes


def evaluate_copy(sm, n: int = 200, min_len: int = 4, max_len: int = 16, max_filler: int = 16, seed: int = 0,
                  batch_size: int = 32, progress: bool = False) -> dict:
    words = word_pieces(sm.tok)
    probes = copy_probes(sm.tok, n, min_len, max_len, max_filler, seed, words)
    longest = max(len(p[0]) for p in probes) - 1
    if longest > sm.max_positions:
        raise UserError(f"probes of {longest} tokens exceed the model's {sm.max_positions} positions; "
                        f"use shorter --lengths or --max-filler")
    rows = []
    for ids, first, second, L in probes:
        scored = [False] * len(ids)
        for s in (first, second):
            for j in range(s + 1, s + L):  # tokens 2..L of each copy
                scored[j] = True
        rows.append(Row(ids, scored))
    res = score_rows(sm, rows, batch_size, progress=progress, desc="copy")
    first_hits = second_hits = tokens = 0
    first_nll = second_nll = 0.0
    for (ids, first, second, L), r in zip(probes, res):
        k = L - 1  # scored tokens per copy, first copy's come first (row order)
        first_hits += int(r.hits[:k].sum())
        second_hits += int(r.hits[k:].sum())
        first_nll -= float(r.logprobs[:k].sum())
        second_nll -= float(r.logprobs[k:].sum())
        tokens += k
    return {"probes": n, "tokens": tokens, "lengths": [min_len, max_len], "max_filler": max_filler, "seed": seed,
            "copy_accuracy": second_hits / tokens, "baseline_accuracy": first_hits / tokens,
            "copy_loss": second_nll / tokens, "baseline_loss": first_nll / tokens,
            "vocabulary_words": len(words)}


def format_copy(res: dict) -> str:
    lo, hi = res["lengths"]
    verdict = ("copies from its context" if res["copy_accuracy"] >= 0.9 else
               "copies some of its context" if res["copy_accuracy"] >= 0.3 else
               "does not copy from its context")
    return "\n".join([
        f"{'':<28} {'accuracy':>9} {'loss':>7}",
        f"{'second copy (after reading)':<28} {res['copy_accuracy']:>9.1%} {res['copy_loss']:>7.3f}",
        f"{'first copy (baseline)':<28} {res['baseline_accuracy']:>9.1%} {res['baseline_loss']:>7.3f}",
        f"{res['probes']} lists of {lo}-{hi} words drawn from {res['vocabulary_words']} single-token words, "
        f"after 0-{res['max_filler']} filler words; {res['tokens']} tokens per copy. "
        f"The model {verdict}."])


def run_eval_copy(args) -> dict:
    from .loglik import load_scoring_model

    sm = load_scoring_model(args.checkpoint, args.device, args.dtype)
    res = evaluate_copy(sm, args.probes, args.lengths[0], args.lengths[1], args.max_filler, args.seed,
                        args.batch_size, progress=not args.no_progress)
    res["checkpoint"] = str(args.checkpoint)
    print(format_copy(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
        print(f"wrote {args.json}", file=sys.stderr)
    return res
