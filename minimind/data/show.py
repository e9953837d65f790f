"""Seeing inside the data: `minimind data show` and `minimind tokenizer show`.

The two questions learners ask most about data are "is my loss mask right?" and "why is my
tokenizer output garbled?". Both are answered by looking at tokens:

* `data show FILE.jsonl --line N` renders record N as the model sees it (the chat template for
  conversations) and marks the tokens the model is trained to produce: green on a terminal,
  between [[ and ]] otherwise. The ids and mask come from the same `render_chat` that
  `data prepare` uses, so what is marked is exactly what SFT trains on (mask[t] = 1: token t is a
  label; the loader shifts it to position t-1). A prepared directory shows its stored tokens and
  mask, which is what training reads.
* `tokenizer show TEXT` lists each token's id, its text, and its bytes. A byte-level BPE works on
  UTF-8 bytes, so one Chinese character (3 bytes) may be split over two tokens; such a token is
  shown as its bytes plus the character it is part of, never as the mojibake of the byte alphabet
  ("æĪĳ") that `id_to_token` returns.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..tokenizer import Tokenizer, render_chat

DEFAULT_TOKENIZER = "runs/demo/tokenizer"
GREEN, DIM, RED, RESET = "\033[32;1m", "\033[2m", "\033[31m", "\033[0m"
OPEN, CLOSE = "[[", "]]"


@dataclass
class View:
    """One token sequence to show: ids and the 0/1 mask of tokens the model learns to produce."""

    title: str
    ids: list[int]
    mask: list[int]
    note: str = ""


# ----------------------------------------------------------------------------- loading

def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer directory, a tokenizer.json, a checkpoint or a run directory holding one."""
    p = Path(path)
    for cand in (p, p / "checkpoint"):
        if cand.suffix == ".json" or (cand / "tokenizer.json").is_file():
            return Tokenizer.load(cand)
    raise UserError(f"--tokenizer {path}: no tokenizer.json there (nor in {p / 'checkpoint'}); pass the "
                    "directory `minimind tokenizer train` wrote, or a checkpoint (after `minimind demo`: "
                    f"{DEFAULT_TOKENIZER})")


def read_jsonl_line(path: Path, n: int) -> dict:
    """Line n (1-based) of a JSONL file, parsed; errors name path:line."""
    if n < 1:
        raise UserError(f"--line {n}: lines are numbered from 1")
    try:
        with open(path, "rb") as f:
            for i, raw in enumerate(f, 1):
                if i == n:
                    break
            else:
                raise UserError(f"--line {n}: {path} has only {i if 'i' in locals() else 0} lines")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not raw.strip():
        raise UserError(f"{path}:{n}: the line is empty")
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}:{n}: not a JSON record ({e}); fix the line") from None


def record_views(record: dict, tok: Tokenizer, where: str) -> list[View]:
    """The token views of one raw record, masked exactly as `data prepare` masks it."""
    from .records import BadRecord, check_record, kind_of

    kind = kind_of(record)
    if kind is None:
        raise UserError(f"{where}: record has none of the fields 'text', 'conversations' or 'chosen'/'rejected'")
    try:
        check_record(record, kind)
    except BadRecord as e:
        raise UserError(f"{where}: {e}; fix the line") from None
    if kind == "pretrain":
        ids = tok.encode(record["text"]) + [tok.eot_id]
        return [View("pretraining text", ids, [1] * len(ids), "pretraining trains on every token")]
    if kind == "rl":
        ids, mask = render_chat(tok, record["conversations"], add_generation_prompt=True)
        return [View("RL prompt", ids, mask, "an RL prompt: the reply is generated, nothing here is trained")]
    if kind == "dpo":
        return [View(side, *render_chat(tok, record[side])) for side in ("chosen", "rejected")]
    return [View("conversation", *render_chat(tok, record["conversations"]))]


def prepared_views(path: Path, n: int, tok: Tokenizer) -> list[View]:
    """Record n (1-based) of a prepared directory: the very tokens and mask training reads."""
    from .prepare import load_prepared

    data = load_prepared(path, tok)
    if not 1 <= n <= len(data):
        raise UserError(f"--line {n}: {path} holds records 1..{len(data)}")
    if data.kind == "pretrain":
        ids = data.docs.ids(n - 1).tolist()
        return [View("pretraining text", ids, [1] * len(ids), "pretraining trains on every token")]
    return [View(part if data.kind == "dpo" else "conversation", arr.ids(n - 1).tolist(),
                 arr.loss_mask(n - 1).tolist()) for part, arr in data.parts.items()]


# ----------------------------------------------------------------------------- rendering

def mask_runs(ids: list[int], mask: list[int]) -> list[tuple[bool, list[int]]]:
    """Consecutive tokens with the same mask value: [(trained, ids), ...]."""
    runs: list[tuple[bool, list[int]]] = []
    for t, m in zip(ids, mask):
        if runs and runs[-1][0] == bool(m):
            runs[-1][1].append(t)
        else:
            runs.append((bool(m), [t]))
    return runs


def render_view(view: View, tok: Tokenizer, colour: bool, keep: int | None = None) -> str:
    """The decoded text with trained runs marked; tokens past `keep` are shown as cut."""
    kept_ids, kept_mask = view.ids[:keep], view.mask[:keep]
    out = []
    for trained, run in mask_runs(kept_ids, kept_mask):
        text = tok.decode(run)
        if colour:
            out.append((GREEN if trained else DIM) + text + RESET)
        else:
            out.append(OPEN + text + CLOSE if trained else text)
    if keep is not None and len(view.ids) > keep:
        cut = tok.decode(view.ids[keep:])
        label = f"\n--- cut: the {len(view.ids) - keep} tokens below are past --max-seq-len and never trained ---\n"
        out.append((RED + label + DIM + cut + RESET) if colour else label + cut)
    return "".join(out)


def summary(view: View, keep: int | None) -> str:
    n, trained = len(view.ids), sum(view.mask)
    line = f"{view.title}: {n} tokens, {trained} trained ({trained / max(n, 1):.0%})"
    if keep is not None and n > keep:
        line += f"; cut to {keep}: {sum(view.mask[:keep])} trained tokens remain"
    return line + (f" - {view.note}" if view.note else "")


def token_table(view: View, tok: Tokenizer) -> str:
    lines = [f"{'pos':>5} {'id':>6}  trained  token"]
    for i, (t, m) in enumerate(zip(view.ids, view.mask)):
        lines.append(f"{i:>5} {t:>6}  {'yes' if m else '-':<7}  {readable_piece(tok, t)}")
    return "\n".join(lines)


def _use_colour(choice: str) -> bool:
    return choice == "always" or (choice == "auto" and sys.stdout.isatty())


def cmd_data_show(args) -> list[View]:
    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    tok_path = args.tokenizer or DEFAULT_TOKENIZER
    tok = load_tokenizer(tok_path)
    if path.is_dir():
        views, where = prepared_views(path, args.line, tok), f"{path} record {args.line}"
    else:
        views, where = record_views(read_jsonl_line(path, args.line), tok, f"{path}:{args.line}"), f"{path}:{args.line}"
    keep = args.max_seq_len + 1 if args.max_seq_len else None
    colour = _use_colour(args.color)
    legend = ("trained tokens in green, the rest dimmed" if colour else f"trained tokens between {OPEN} and {CLOSE}")
    print(f"{where} ({legend}; tokenizer {tok_path})")
    for v in views:
        print(f"\n== {summary(v, keep)}")
        print(token_table(v, tok) if args.tokens else render_view(v, tok, colour, keep))
    return views


# ----------------------------------------------------------------------------- tokenizer show

def token_bytes(tok: Tokenizer, token_id: int) -> bytes:
    """The raw bytes a token stands for (byte-level BPE pieces are bytes in a printable alphabet)."""
    piece = tok.id_to_token(token_id)
    if piece is None:
        raise UserError(f"token id {token_id} is not in the vocabulary (size {tok.vocab_size})")
    if token_id < 16 or piece.startswith("<"):  # special and tag tokens are stored as plain text
        added = {t.content for t in tok.backend.get_added_tokens_decoder().values()}
        if piece in added:
            return piece.encode("utf-8")
    return bytes(_BYTE_OF[ch] for ch in piece)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map: printable Latin-1 bytes stand for themselves, the
    others (space, control bytes, ...) in order for chr(256), chr(257), ... ("Ġ" is the space)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


_BYTE_OF = {ch: b for b, ch in _byte_alphabet().items()}


def readable_piece(tok: Tokenizer, token_id: int) -> str:
    """A token's text: the decoded string if its bytes are whole UTF-8 characters, else its bytes."""
    raw = token_bytes(tok, token_id)
    try:
        return repr(raw.decode("utf-8"))[1:-1].replace(" ", "␣")
    except UnicodeDecodeError:
        return "bytes " + " ".join(f"{b:02x}" for b in raw)


def tokenize_rows(tok: Tokenizer, text: str) -> list[dict]:
    """One row per token: id, readable text, bytes, and the characters of `text` it covers."""
    enc = tok.backend.encode(text, add_special_tokens=False)
    rows = []
    for tid, (start, end) in zip(enc.ids, enc.offsets):
        raw = token_bytes(tok, tid)
        try:
            piece, whole = raw.decode("utf-8"), True
        except UnicodeDecodeError:
            piece, whole = None, False
        rows.append({"id": tid, "text": piece, "bytes": raw.hex(" "), "whole": whole, "of": text[start:end]})
    return rows


def format_tokens(rows: list[dict], text: str) -> str:
    n_bytes = len(text.encode("utf-8"))
    head = (f"{len(text)} characters, {n_bytes} bytes -> {len(rows)} tokens "
            f"({len(text) / max(len(rows), 1):.2f} characters per token)")
    lines = [head, f"{'#':>4} {'id':>6}  {'token':<16} {'bytes':<24} note"]
    for i, r in enumerate(rows):
        shown = repr(r["text"])[1:-1].replace(" ", "␣") if r["whole"] else "(part)"
        note = "" if r["whole"] else f"{len(r['bytes'].split())} of the {len(r['of'].encode('utf-8'))} bytes of {r['of']!r}"
        lines.append(f"{i:>4} {r['id']:>6}  {_ljust(shown, 16)} {r['bytes']:<24} {note}".rstrip())
    return "\n".join(lines)


def _ljust(text: str, width: int) -> str:
    """Pad to `width` terminal columns: Chinese characters take two."""
    import unicodedata

    cols = sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
    return text + " " * max(0, width - cols)


def cmd_tokenizer_show(args) -> list[dict]:
    tok = load_tokenizer(args.tokenizer or DEFAULT_TOKENIZER)
    text = " ".join(args.text)
    if not text:
        raise UserError("tokenizer show: give the TEXT to tokenize")
    rows = tokenize_rows(tok, text)
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
    else:
        print(format_tokens(rows, text))
    return rows
