"""Perplexity and bits per byte over a text or conversation file (`minimind eval ppl`).

For a file of documents with N scored tokens spelling B bytes of UTF-8 in total (loglik.py):

    loss = -(1/N) sum_t log p(x_t | x_<t),   ppl = exp(loss),   bpb = loss * N / (B ln 2)

Text records ({"text"}) are scored the way pretraining saw them: each document after the
end-of-text token that separates documents, every token of the document scored (so its B is
exactly len(text.encode("utf-8"))). Conversation records ({"conversations"}) are rendered with
the chat template and only the assistant tokens are scored, the tokens SFT trains (B counts
their bytes, including the <|im_end|> that closes each reply).

A document longer than the window L is cut into windows (Press et al. 2021's "sliding window"
evaluation): targets advance by `stride` S <= L and each target sees up to L tokens before it.
S = L (the default) gives disjoint windows, where a window's first targets see little context;
a smaller S gives every target at least L - S tokens of context, at L/S times the cost.

The file is streamed in chunks of CHUNK_DOCS documents, so its size does not matter.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

from ..errors import UserError
from .loglik import Row, ScoringModel, score_rows, summarize, token_byte_lengths

CHUNK_DOCS = 512


def windows(ids: list[int], scored: list[bool], length: int, stride: int) -> list[Row]:
    """Cut one sequence into rows of at most length + 1 tokens; each scored token in exactly one.

    Row k predicts targets [a, b) (b - a <= stride) from inputs ids[max(0, b-1-length) : b-1].
    """
    rows, a, n = [], 1, len(ids)
    while a < n:
        b = min(a + stride, n)
        start = max(0, b - 1 - length)
        mask = [False] * (a - start) + scored[a:b]
        if any(mask):
            rows.append(Row(ids[start:b], mask))
        a = b
    return rows


def _sequences(tok, kind: str, records: list[dict]) -> list[tuple[list[int], list[bool]]]:
    """(ids, scored) per record: a text after end-of-text, all of it scored; a conversation rendered
    with the chat template, its assistant tokens scored (the SFT loss mask)."""
    if kind == "text":
        return [([tok.eot_id] + ids, [False] + [True] * len(ids)) for ids in tok.encode_batch([r["text"] for r in records])]
    from ..tokenizer import render_chat_batch

    return [(list(ids), [False] + [bool(m) for m in mask[1:]])
            for ids, mask in render_chat_batch(tok, [r["conversations"] for r in records])]


def file_kind(path) -> str:
    """"text" or "chat", from the first record; anything else is refused."""
    from ..data.records import detect_kind

    kind = detect_kind(path)
    if kind == "pretrain":
        return "text"
    if kind == "sft":
        return "chat"
    raise UserError(f"{path}: records look like {kind} data; ppl reads text ({{\"text\"}}) or conversation "
                    f"({{\"conversations\"}} with assistant turns) files")


def evaluate_ppl(sm: ScoringModel, path, seq_len: int, stride: int | None = None, batch_size: int = 16,
                 limit: int | None = None, progress: bool = False) -> dict:
    """-> {"loss", "ppl", "bpb", "tokens", "bytes", "docs", "windows", "kind", "seq_len", "stride"}"""
    from tqdm.auto import tqdm

    from ..data.records import RecordStats, iter_records

    stride = stride or seq_len
    if not 1 <= stride <= seq_len:
        raise UserError(f"--stride {stride}: must be in 1..--seq-len ({seq_len})")
    if seq_len > sm.max_positions:
        raise UserError(f"--seq-len {seq_len} exceeds the model's {sm.max_positions} positions")
    path = Path(path)
    kind = file_kind(path)
    nbytes = token_byte_lengths(sm.tok)
    stats = RecordStats()
    records = iter_records(path, "pretrain" if kind == "text" else "sft", "error", stats)
    totals = {"nll": 0.0, "tokens": 0, "bytes": 0, "docs": 0, "windows": 0}
    bar = tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"ppl {path.name}",
               disable=not progress, file=sys.stderr)
    records = itertools.islice(records, limit)  # limit None: all
    with bar:
        while chunk := [rec for _, rec in itertools.islice(records, CHUNK_DOCS)]:
            rows = [w for ids, scored in _sequences(sm.tok, kind, chunk) for w in windows(ids, scored, seq_len, stride)]
            for row, res in zip(rows, score_rows(sm, rows, batch_size)):
                totals["nll"] -= res.total
                totals["tokens"] += len(res.logprobs)
                totals["bytes"] += sum(nbytes[t] for t, s in zip(row.ids, row.scored) if s)
            totals["docs"] += len(chunk)
            totals["windows"] += len(rows)
            bar.update(stats.bytes_read - bar.n)
    if totals["tokens"] == 0:
        raise UserError(f"{path}: nothing to score (no text, or no assistant turns)")
    return {**summarize(totals["nll"], totals["tokens"], totals["bytes"]), "docs": totals["docs"],
            "windows": totals["windows"], "kind": kind, "seq_len": seq_len, "stride": stride,
            "file": str(path)}


def format_ppl(res: dict) -> str:
    return (f"{res['file']}: {res['docs']} {res['kind']} documents, {res['tokens']} tokens scored "
            f"({res['bytes']} bytes) in windows of {res['seq_len']} (stride {res['stride']})\n"
            f"loss {res['loss']:.4f} nats/token   ppl {res['ppl']:.3f}   bits/byte {res['bpb']:.4f}")


def run_eval_ppl(args) -> dict:
    from .loglik import load_scoring_model, training_length

    sm = load_scoring_model(args.checkpoint, args.device, args.dtype)
    seq_len = args.seq_len or default_window(sm, training_length(args.checkpoint))
    res = evaluate_ppl(sm, args.data, seq_len, args.stride, args.batch_size, args.limit,
                       progress=not args.no_progress)
    print(format_ppl(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


def default_window(sm: ScoringModel, trained: int | None) -> int:
    """The training length where it is known, else 512 (never more than the model holds)."""
    if trained is None:
        print(f"note: training length unknown; using windows of {min(512, sm.max_positions)} tokens "
              "(set --seq-len)", file=sys.stderr)
    return min(trained or 512, sm.max_positions)
