"""Tokenize a JSONL dataset once into memory-mapped files (`minimind data prepare`).

Training reads tokens, not text: tokenizing on the fly costs CPU time every epoch and
makes the data loader the bottleneck on a small machine. So a dataset is validated and
tokenized once, into a directory:

    tokens.bin    all token ids back to back, uint16 (vocab < 65536) or uint32
    offsets.npy   int64 (N+1,): record i is tokens[offsets[i]:offsets[i+1]]
    mask.bin      uint8, one per token, 1 = the model learns to produce it (chat kinds only)
    meta.json     kind, counts, dtype, source file (path, size, mtime), tokenizer
                  fingerprint, options, format version

Pretraining documents are each followed by the end-of-text id, so packing them into
windows later keeps the boundaries visible to the model. A DPO dataset holds two such
sets, `chosen/` and `rejected/`, aligned by index.

Chat records (SFT, DPO) are cut to max_seq_len + 1 tokens. A conversation whose assistant
tokens all fall after the cut has nothing left to learn from: a batch of only such rows would
average the loss over zero targets (NaN), so it is dropped (a DPO pair when either side is).
Both counts are printed and kept in meta.json (`truncated`, `dropped_no_target`).

Memory stays bounded whatever the input size: the file is streamed in chunks of
CHUNK_LINES records, each chunk is tokenized with one batched (multithreaded) call and
appended to the output files, and the record boundaries go to a raw int64 file that is
turned into offsets.npy at the end. Everything is written into a temporary directory
that is renamed into place at the end, so an interrupted or failed run leaves nothing
half-written. Re-running with the same input file, tokenizer and options does nothing.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint import atomic_dir
from ..errors import UserError
from ..tokenizer import Tokenizer, render_chat_batch
from .records import RecordStats, detect_kind, iter_records

FORMAT_VERSION = 1
CHUNK_LINES = 4096  # records tokenized per batch call: big enough for threads, small in RAM
PREPARED_KINDS = ("pretrain", "sft", "dpo")
OFFSET_COPY_BLOCK = 1 << 20  # int64s copied at a time when writing offsets.npy


@dataclass
class PreparedInfo:
    """What `prepare` produced (or found already there)."""

    out_dir: Path
    kind: str
    n_records: int
    n_tokens: int
    skipped: int
    up_to_date: bool  # True: nothing was done, the directory already matched
    meta: dict


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- writing

class _TokenFileWriter:
    """Appends records (token ids, optional loss masks) to tokens.bin / mask.bin in `folder`.

    Record ends go to offsets.raw as they come; `finish` turns them into offsets.npy
    without ever holding all of them in memory.
    """

    def __init__(self, folder: Path, dtype: np.dtype, with_mask: bool):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.dtype = folder, dtype
        self.tokens = open(folder / "tokens.bin", "wb")
        self.ends = open(folder / "offsets.raw", "wb")
        self.mask = open(folder / "mask.bin", "wb") if with_mask else None
        self.n_tokens = 0
        self.n_records = 0

    def add(self, seqs: list, masks: list | None = None) -> None:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=total)
        if total and (flat.min() < 0 or flat.max() > np.iinfo(self.dtype).max):
            raise UserError(f"token id {int(flat.max())} does not fit {self.dtype}; tokenizer and vocab size disagree")
        self.tokens.write(flat.astype(self.dtype).tobytes())
        if self.mask is not None:
            m = np.fromiter(itertools.chain.from_iterable(masks), dtype=np.uint8, count=total)
            self.mask.write(m.tobytes())
        self.ends.write((self.n_tokens + np.cumsum(lengths)).tobytes())
        self.n_tokens += total
        self.n_records += len(seqs)

    def close(self) -> None:
        for f in (self.tokens, self.ends, self.mask):
            if f is not None:
                f.close()

    def finish(self) -> dict:
        self.close()
        raw_path = self.folder / "offsets.raw"
        out = np.lib.format.open_memmap(
            self.folder / "offsets.npy", mode="w+", dtype=np.int64, shape=(self.n_records + 1,)
        )
        out[0] = 0
        if self.n_records:
            raw = np.memmap(raw_path, dtype=np.int64, mode="r")
            for s in range(0, self.n_records, OFFSET_COPY_BLOCK):
                out[1 + s : 1 + s + OFFSET_COPY_BLOCK] = raw[s : s + OFFSET_COPY_BLOCK]
            del raw
        out.flush()
        del out
        raw_path.unlink()
        return {"n_records": self.n_records, "n_tokens": self.n_tokens}


# ----------------------------------------------------------------------------- tokenizing

def _truncate(pairs: list, limit: int | None) -> tuple[list, list, int, int]:
    """(ids, mask) pairs -> (ids list, mask list, how many were cut to `limit` tokens, the longest's
    length before the cut)."""
    ids = [list(p[0]) for p in pairs]
    masks = [list(p[1]) for p in pairs]
    cut, longest = 0, max((len(x) for x in ids), default=0)
    if limit is not None:
        for i, seq in enumerate(ids):
            if len(seq) > limit:
                ids[i], masks[i] = seq[:limit], masks[i][:limit]
                cut += 1
    return ids, masks, cut, longest


def _render(tok: Tokenizer, convs: list, lines: list[int], path: Path) -> list:
    """render_chat_batch, but a conversation the chat template refuses is reported as path:line.

    Validation in records.py should already have refused it; this is the safety net.
    """
    try:
        return render_chat_batch(tok, convs)
    except UserError:
        for conv, lineno in zip(convs, lines):
            try:
                render_chat_batch(tok, [conv])
            except UserError as e:
                raise UserError(f"{path}:{lineno}: {e}; fix the line") from None
        raise


def _has_target(mask: list) -> bool:
    """Does a row train on anything? Label t is token t+1, so the first token is never a target."""
    return any(mask[1:])


def _add_chunk(kind: str, tok: Tokenizer, chunk: list, writers: dict, limit: int | None,
               path: Path) -> tuple[int, int, int]:
    """Tokenize one chunk of (line, record) with one batch call.

    Returns (records truncated, records dropped for having no trained token after truncation,
    the longest record's length in tokens before truncation)."""
    lines, records = [ln for ln, _ in chunk], [rec for _, rec in chunk]
    if kind == "pretrain":
        seqs = tok.encode_batch([r["text"] for r in records])
        eot = tok.eot_id
        writers["docs"].add([list(s) + [eot] for s in seqs])
        return 0, 0, 0
    if kind == "sft":
        pairs = _render(tok, [r["conversations"] for r in records], lines, path)
        ids, masks, cut, longest = _truncate(pairs, limit)
        keep = [i for i, m in enumerate(masks) if _has_target(m)]
        writers["docs"].add([ids[i] for i in keep], [masks[i] for i in keep])
        return cut, len(ids) - len(keep), longest
    # dpo: chosen and rejected rendered in the same call, split afterwards
    n = len(records)
    convs = [r["chosen"] for r in records] + [r["rejected"] for r in records]
    ids, masks, cut, longest = _truncate(_render(tok, convs, lines + lines, path), limit)
    keep = [i for i in range(n) if _has_target(masks[i]) and _has_target(masks[n + i])]
    writers["chosen"].add([ids[i] for i in keep], [masks[i] for i in keep])
    writers["rejected"].add([ids[n + i] for i in keep], [masks[n + i] for i in keep])
    return cut, n - len(keep), longest


def _chunks(iterable, size: int):
    it = iter(iterable)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


# ----------------------------------------------------------------------------- bookkeeping

def _source_info(path: Path) -> dict:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_meta(out_dir: Path) -> dict | None:
    try:
        return json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _matches(meta: dict | None, wanted: dict) -> bool:
    """Is an existing prepared directory exactly what this call would produce?"""
    if not meta:
        return False
    same = all(meta.get(k) == wanted[k] for k in ("format_version", "kind", "source", "tokenizer_fingerprint",
                                                   "max_seq_len", "drop_no_target"))
    # the bad-record policy only matters if the last run actually met bad records
    return same and (meta.get("skipped") == 0 or meta.get("on_bad_record") == wanted["on_bad_record"])


def _intact(out_dir: Path) -> bool:
    """Are all files there with the right sizes? (A damaged directory is rebuilt.)"""
    try:
        load_prepared(out_dir)
        return True
    except UserError:
        return False


def _check_out_dir(out_dir: Path) -> None:
    """Refuse to replace a directory that is not a prepared dataset (it may hold user files)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory; choose another output directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / "meta.json").exists():
        raise UserError(f"{out_dir}: directory is not empty and holds no prepared dataset; choose a new or empty one")


def _load_tokenizer(tokenizer) -> Tokenizer:
    if isinstance(tokenizer, (str, Path)):
        return Tokenizer.load(tokenizer)
    return tokenizer


def _info(out_dir: Path, meta: dict, up_to_date: bool) -> PreparedInfo:
    return PreparedInfo(out_dir, meta["kind"], meta["n_records"], meta["n_tokens"], meta["skipped"], up_to_date, meta)


# ----------------------------------------------------------------------------- main entry

def prepare(
    input_path: str | Path,
    tokenizer: str | Path | Tokenizer,
    out_dir: str | Path,
    kind: str | None = None,
    max_seq_len: int | None = None,
    on_bad_record: str = "error",
    progress: bool = True,
    verbose: bool = True,
) -> PreparedInfo:
    """Validate and tokenize `input_path` (JSONL) into `out_dir`; a no-op if already done.

    kind: "pretrain", "sft" (also LoRA / reasoning data) or "dpo"; guessed from the first
    record when None. max_seq_len: chat records longer than max_seq_len + 1 tokens are cut
    there (what a loader with that max_seq_len would use anyway); pretraining documents
    are never cut, they are packed later; chat records with no trained token left after
    the cut are dropped and counted. on_bad_record: "error" stops at the first bad line,
    "skip" leaves bad lines out and reports how many. verbose=False: no summary lines.
    """
    say = _say if verbose else (lambda _: None)
    input_path, out_dir = Path(input_path), Path(out_dir)
    if not input_path.is_file():
        raise UserError(f"{input_path}: no such file")
    kind = kind or detect_kind(input_path)
    if kind not in PREPARED_KINDS:
        hint = " (RL prompt files are read directly, no prepare needed)" if kind == "rl" else ""
        raise UserError(f"cannot prepare kind {kind!r}{hint}; expected one of {', '.join(PREPARED_KINDS)}")
    if on_bad_record not in ("error", "skip"):
        raise UserError(f"on_bad_record must be 'error' or 'skip', got {on_bad_record!r}")
    if max_seq_len is not None and max_seq_len < 1:
        raise UserError(f"max_seq_len must be positive, got {max_seq_len}")
    tok = _load_tokenizer(tokenizer)
    wanted = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": _source_info(input_path),
        "tokenizer_fingerprint": tok.fingerprint(),
        "max_seq_len": None if kind == "pretrain" else max_seq_len,
        "on_bad_record": on_bad_record,
        "drop_no_target": True,  # chat rows with nothing to learn are dropped (older caches kept them)
    }
    old_meta = _read_meta(out_dir)
    if _matches(old_meta, wanted) and _intact(out_dir):
        say(f"{out_dir}: up to date ({old_meta['n_records']} records, {old_meta['n_tokens']} tokens"
            f"{_cut_note(old_meta)})")
        return _info(out_dir, old_meta, up_to_date=True)
    _check_out_dir(out_dir)
    with atomic_dir(out_dir) as tmp:  # never leave a half-written dataset behind
        meta = _build(input_path, tok, tmp, wanted, progress, say)
    say(f"{out_dir}: {meta['n_records']} records, {meta['n_tokens']} tokens ({meta['dtype']}){_cut_note(meta)}")
    return _info(out_dir, meta, up_to_date=False)


def _cut_note(meta: dict) -> str:
    notes = []
    if meta.get("truncated"):
        notes.append(f"{meta['truncated']} cut to max_seq_len={meta['max_seq_len']}"
                     + (f" (the longest has {meta['longest']} tokens: --max-seq-len {meta['longest'] - 1} keeps "
                        f"every record whole)" if meta.get("longest") else ""))
    if meta.get("dropped_no_target"):
        notes.append(f"{meta['dropped_no_target']} dropped: no assistant token left after the cut")
    return "; " + ", ".join(notes) if notes else ""


def _build(input_path: Path, tok: Tokenizer, tmp: Path, wanted: dict, progress: bool, say=_say) -> dict:
    """Stream, tokenize and write everything into `tmp`; returns the meta written there."""
    kind = wanted["kind"]
    dtype = np.dtype(np.uint16 if tok.vocab_size < 65536 else np.uint32)
    limit = None if wanted["max_seq_len"] is None else wanted["max_seq_len"] + 1
    parts = ("chosen", "rejected") if kind == "dpo" else ("docs",)
    writers = {
        p: _TokenFileWriter(tmp / p if kind == "dpo" else tmp, dtype, with_mask=kind != "pretrain") for p in parts
    }
    stats = RecordStats()
    records = iter_records(input_path, kind, wanted["on_bad_record"], stats)
    truncated = dropped = longest = 0
    bar = tqdm(total=wanted["source"]["size"], unit="B", unit_scale=True, desc=f"prepare {input_path.name}",
               disable=not progress, file=sys.stderr)
    try:
        with bar:
            try:
                for chunk in _chunks(records, CHUNK_LINES):
                    cut, empty, most = _add_chunk(kind, tok, chunk, writers, limit, input_path)
                    truncated, dropped, longest = truncated + cut, dropped + empty, max(longest, most)
                    bar.update(stats.bytes_read - bar.n)
            except BaseException:
                bar.leave = False  # clear the bar: the error should be the line left on screen
                raise
    finally:
        for w in writers.values():
            w.close()
    if stats.skipped:
        say(f"{input_path}: {stats.summary()}")
    if stats.good == 0:
        raise UserError(f"{input_path}: no usable records; nothing to prepare")
    if dropped == stats.good:
        raise UserError(f"{input_path}: no record has an assistant token within max_seq_len="
                        f"{wanted['max_seq_len']} tokens; raise --max-seq-len")
    sizes = {p: w.finish() for p, w in writers.items()}
    meta = dict(
        wanted,
        n_records=stats.good - dropped,
        n_tokens=sum(s["n_tokens"] for s in sizes.values()),
        dtype=dtype.name,
        vocab_size=tok.vocab_size,
        eot_id=tok.eot_id,
        pad_id=tok.pad_id,
        eos_id=tok.eos_id,
        skipped=stats.skipped,
        skipped_examples=stats.reasons,
        truncated=truncated,
        dropped_no_target=dropped,
        longest=longest,  # tokens of the longest record before the cut (chat kinds)
    )
    if kind == "dpo":
        meta["parts"] = sizes
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False), encoding="utf-8")
    return meta


# ----------------------------------------------------------------------------- reading back

@dataclass
class TokenArrays:
    """One tokenized record set, memory-mapped: record i is tokens[offsets[i]:offsets[i+1]]."""

    tokens: np.ndarray  # (n_tokens,) uint16 / uint32
    offsets: np.ndarray  # (n_records + 1,) int64
    mask: np.ndarray | None  # (n_tokens,) uint8, 1 = trained token; None for pretraining

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def ids(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def loss_mask(self, i: int) -> np.ndarray:
        return self.mask[self.offsets[i] : self.offsets[i + 1]]


@dataclass
class PreparedData:
    """A prepared dataset directory, memory-mapped (nothing is read into RAM up front)."""

    path: Path
    meta: dict
    parts: dict  # {"docs": TokenArrays} or {"chosen": ..., "rejected": ...} for DPO

    @property
    def kind(self) -> str:
        return self.meta["kind"]

    @property
    def docs(self) -> TokenArrays:
        return self.parts["docs"]

    @property
    def chosen(self) -> TokenArrays:
        return self.parts["chosen"]

    @property
    def rejected(self) -> TokenArrays:
        return self.parts["rejected"]

    def __len__(self) -> int:
        return self.meta["n_records"]


def _map_file(path: Path, dtype: np.dtype, count: int, where: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{where}: missing {path.name}; re-run `minimind data prepare`")
    if path.stat().st_size != count * dtype.itemsize:
        raise UserError(f"{where}: {path.name} has the wrong size (truncated copy?); re-run `minimind data prepare`")
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _load_part(folder: Path, dtype: np.dtype, with_mask: bool, n_records: int, where: Path) -> TokenArrays:
    try:
        offsets = np.load(folder / "offsets.npy", mmap_mode="r")
    except FileNotFoundError:
        raise UserError(f"{where}: missing offsets.npy; re-run `minimind data prepare`") from None
    except (ValueError, OSError) as e:
        raise UserError(f"{where}: offsets.npy is corrupt ({e}); re-run `minimind data prepare`") from None
    if offsets.shape != (n_records + 1,) or offsets.dtype != np.int64 or offsets[0] != 0:
        raise UserError(f"{where}: offsets.npy does not match meta.json; re-run `minimind data prepare`")
    n_tokens = int(offsets[-1])
    tokens = _map_file(folder / "tokens.bin", dtype, n_tokens, where)
    mask = _map_file(folder / "mask.bin", np.dtype(np.uint8), n_tokens, where) if with_mask else None
    return TokenArrays(tokens, offsets, mask)


def load_prepared(path: str | Path, tokenizer: str | Path | Tokenizer | None = None) -> PreparedData:
    """Memory-map a directory written by `prepare`; checks it is whole (and, given a
    tokenizer, that it was prepared with that very tokenizer)."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        raise UserError(f"{path}: no prepared dataset here (meta.json missing); run `minimind data prepare` first")
    meta = _read_meta(path)
    if not isinstance(meta, dict) or not {"kind", "n_records", "n_tokens", "dtype"} <= meta.keys():
        raise UserError(f"{path}: meta.json is corrupt; re-run `minimind data prepare`")
    if meta.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: prepared by another version (format {meta.get('format_version')}, "
                        f"need {FORMAT_VERSION}); re-run `minimind data prepare`")
    if tokenizer is not None:
        theirs, ours = meta.get("tokenizer_fingerprint"), _load_tokenizer(tokenizer).fingerprint()
        if theirs != ours:
            raise UserError(f"{path}: prepared with a different tokenizer (fingerprint {theirs}, this one {ours}); "
                            f"re-run `minimind data prepare` with this tokenizer")
    if meta["kind"] not in PREPARED_KINDS or meta["dtype"] not in ("uint16", "uint32"):
        raise UserError(f"{path}: meta.json is corrupt (kind {meta['kind']!r}, dtype {meta['dtype']!r})")
    dtype, n = np.dtype(meta["dtype"]), meta["n_records"]
    if meta["kind"] == "dpo":
        parts = {p: _load_part(path / p, dtype, True, n, path / p) for p in ("chosen", "rejected")}
    else:
        parts = {"docs": _load_part(path, dtype, meta["kind"] != "pretrain", n, path)}
    if sum(int(p.offsets[-1]) for p in parts.values()) != meta["n_tokens"]:
        raise UserError(f"{path}: token count does not match meta.json; re-run `minimind data prepare`")
    return PreparedData(path, meta, parts)

