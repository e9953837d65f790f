"""Batch iterators over prepared (memory-mapped) data: deterministic, resumable, DDP-aware.

No DataLoader, no worker processes: the tokens are already on disk in a memory map,
so a batch is a few numpy slices turned into torch tensors.

Every loader works the same way. For each epoch it computes a *plan*: the list of
global batches, shuffled with a generator seeded by (seed, epoch). The position in
the data is just (epoch, cursor), where cursor counts the global batches already
consumed. Rank r of world_size takes plan[cursor + r] and then everybody advances the
cursor by world_size, so:

  - two ranks with batch size B see exactly what one process sees in two consecutive
    micro-steps of batch size B (the plan does not depend on world_size);
  - all ranks hold the same state, so one rank's `state_dict()` resumes all of them,
    even with another world_size;
  - an epoch ends when fewer than world_size batches are left (every rank gets the same
    number of steps, which DDP needs), and iteration goes on forever with a new shuffle.

Each batch is a dict of torch tensors: `input_ids` (B, T) int64, `labels` (B, T) int64
with -100 where there is nothing to predict, and `n_tokens` (number of real labels).

PretrainLoader packs: the token stream (documents separated by the end-of-text id) is
cut into windows of seq_len + 1 tokens, so there is no padding at all.

SFTLoader / DPOLoader cannot pack without masking attention across conversations, so
they bucket by length instead: shuffle, then within chunks of ~100 batches' worth of
tokens sort conversations by length and cut batches under a token budget (batch_size *
max_seq_len padded tokens), so similar lengths share a batch (little padding) and short
conversations make batches with more rows. The batch order is shuffled again. DPO
batches also carry `index` (B,): each pair's record index (the reference-log-prob cache key).

Resuming with another batch size: pretraining windows and packed SFT rows come in an order
that does not depend on the batch size (batches are consecutive groups of it), so a saved
position converts to the new size; length buckets depend on it, so there it is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .prepare import PreparedData, TokenArrays, load_prepared

IGNORE = -100  # label value that cross_entropy(ignore_index=-100) skips
CHUNK_BATCHES = 100  # bucketing sorts within chunks of about CHUNK_BATCHES batches' worth of tokens


def _need_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise UserError(f"{name} must be a positive integer, got {v!r}")


class _Loader:
    """Epoch plans, the (epoch, cursor) position, rank slicing and state; subclasses make batches."""

    kind = ""

    def __init__(self, data: PreparedData, seed: int, rank: int, world_size: int):
        if not isinstance(data, PreparedData):
            raise TypeError(f"expected PreparedData (from load_prepared), got {type(data).__name__}")
        if data.kind != self.kind:
            raise UserError(f"{data.path}: {type(self).__name__} needs a {self.kind} dataset, this one is {data.kind}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is not in [0, world_size={world_size})")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {seed!r}")
        self.data, self.seed, self.rank, self.world_size = data, seed, rank, world_size
        self.epoch = 0
        self.cursor = 0  # global batches of this epoch consumed by all ranks together
        self._plan_cache: tuple[int, list] | None = None

    # -- subclass hooks
    def _make_plan(self, rng: np.random.Generator) -> list:
        raise NotImplementedError

    def _make_batch(self, entry) -> dict:
        raise NotImplementedError

    def _settings(self) -> dict:
        """What must be equal for a saved position to mean the same batches."""
        raise NotImplementedError

    # -- plan and position
    def plan(self, epoch: int | None = None) -> list:
        """The global batches of an epoch (each an array of sample or window indices)."""
        epoch = self.epoch if epoch is None else epoch
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            plan = self._make_plan(np.random.default_rng([self.seed, epoch]))
            if len(plan) < self.world_size:
                raise UserError(f"{self.data.path}: only {len(plan)} batches per epoch, fewer than "
                                f"world_size={self.world_size}; use more data or a smaller batch")
            self._plan_cache = (epoch, plan)
        return self._plan_cache[1]

    def __len__(self) -> int:
        """Batches this rank gets per epoch."""
        return len(self.plan()) // self.world_size

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.cursor + self.world_size > len(self.plan()):
            self.epoch, self.cursor = self.epoch + 1, 0
        batch = self._make_batch(self.plan()[self.cursor + self.rank])
        self.cursor += self.world_size
        return batch

    # -- resume
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, **self._settings()}

    def regroupable(self) -> bool:
        """Is an epoch's order of samples independent of batch_size (batches are consecutive groups)?
        Then a position saved with another batch size converts: the same samples count as seen."""
        return False

    def load_state_dict(self, state: dict) -> None:
        cursor = int(state["cursor"])
        for key, now in self._settings().items():
            if key == "batch_size" and self.regroupable() and isinstance(state.get(key), int):
                cursor = cursor * state[key] // now  # samples seen, regrouped into batches of the new size
                continue
            if state.get(key) != now:
                raise UserError(f"data position was saved with {key}={state.get(key)!r}, now {key}={now!r}; "
                                f"resume with the same data and batch settings (or start a fresh run)")
        self.epoch, self.cursor = int(state["epoch"]), cursor


# ----------------------------------------------------------------------------- pretraining

class PretrainLoader(_Loader):
    """Packed windows of seq_len + 1 tokens from the document stream: 100% real tokens."""

    kind = "pretrain"

    def __init__(self, data: PreparedData, batch_size: int, seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(data, seed, rank, world_size)
        _need_positive(batch_size=batch_size, seq_len=seq_len)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.tokens = data.docs.tokens
        self.n_windows = len(self.tokens) // (seq_len + 1)  # the trailing remainder is never used
        if self.n_windows < batch_size * world_size:
            raise UserError(f"{data.path}: {len(self.tokens)} tokens make {self.n_windows} windows of "
                            f"seq_len+1={seq_len + 1}, fewer than batch_size*world_size="
                            f"{batch_size * world_size}; use more data, a shorter seq_len or a smaller batch")

    def _settings(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "batch_size": self.batch_size,
                "seq_len": self.seq_len, "n_tokens": len(self.tokens)}

    def regroupable(self) -> bool:
        return True  # one permutation of windows per epoch, cut into consecutive batches

    def _make_plan(self, rng):
        n_batches = self.n_windows // self.batch_size
        order = rng.permutation(self.n_windows)[: n_batches * self.batch_size]
        return list(order.reshape(n_batches, self.batch_size))

    def _make_batch(self, windows: np.ndarray) -> dict:
        width = self.seq_len + 1
        idx = (windows * width)[:, None] + np.arange(width)  # (B, T+1) positions in the stream
        w = torch.from_numpy(self.tokens[idx].astype(np.int64))
        return {"input_ids": w[:, :-1].contiguous(), "labels": w[:, 1:].contiguous(),
                "n_tokens": torch.tensor(w.shape[0] * self.seq_len)}


# ----------------------------------------------------------------------------- chat data

def _cut_sorted(chunk: np.ndarray, width: np.ndarray, budget: int) -> list:
    """Cut a chunk sorted by decreasing width into batches of at most `budget` padded tokens."""
    batches, i = [], 0
    while i < len(chunk):
        rows = max(1, budget // int(width[chunk[i]]))  # the first row is the widest
        batches.append(chunk[i : i + rows])
        i += rows
    return batches


def _rows(parts: TokenArrays, idx: np.ndarray, max_len: int):
    """Yield (input ids, labels) of records idx, cut to max_len + 1 tokens, as int64 arrays."""
    for i in idx:
        start = int(parts.offsets[i])
        end = min(int(parts.offsets[i + 1]), start + max_len + 1)
        ids = parts.tokens[start:end].astype(np.int64)
        trained = parts.mask[start + 1 : end] == 1  # label t is token t+1: trained if ITS mask is 1
        yield ids[:-1], np.where(trained, ids[1:], IGNORE)


def _pad(rows: list, width: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE, dtype=np.int64)
    for r, (x, y) in enumerate(rows):
        inputs[r, : len(x)], labels[r, : len(y)] = x, y
    return torch.from_numpy(inputs), torch.from_numpy(labels)


class _BucketLoader(_Loader):
    """Length-bucketed batches of conversations under a padded-token budget."""

    copies = 1  # sequences per sample (2 for DPO pairs)

    def __init__(self, data: PreparedData, batch_size: int, max_seq_len: int, seed: int,
                 rank: int, world_size: int):
        super().__init__(data, seed, rank, world_size)
        _need_positive(batch_size=batch_size, max_seq_len=max_seq_len)
        self.batch_size, self.max_seq_len = batch_size, max_seq_len
        self.budget = batch_size * max_seq_len
        self.pad_id = int(data.meta.get("pad_id", 0))
        # input length of each sample after truncation (a sample of L tokens gives L-1 predictions)
        lens = [np.minimum(p.lengths(), max_seq_len + 1) - 1 for p in self._parts()]
        self.width = np.maximum.reduce(lens)  # padded width a sample needs
        self.real = np.add.reduce(lens)  # real (non-pad) input tokens of a sample
        self.usable = np.flatnonzero(np.minimum.reduce(lens) >= 1)  # at least one prediction
        if len(self.usable) == 0:
            raise UserError(f"{data.path}: no record has 2 or more tokens; nothing to train on")
        self.plan()  # fail now, not at the first step, if there are fewer batches than ranks

    def _parts(self) -> list:
        raise NotImplementedError

    def _settings(self) -> dict:
        return {"kind": self.kind, "seed": self.seed, "batch_size": self.batch_size,
                "max_seq_len": self.max_seq_len, "n_records": len(self.data)}

    def _make_plan(self, rng):
        order = rng.permutation(self.usable)
        # sort within chunks, not globally: a global sort would put the same conversations
        # together every epoch. Chunk boundaries fall every ~CHUNK_BATCHES budgets of tokens:
        # the more batches a sorted chunk yields, the closer the lengths inside each batch.
        tokens_before = np.cumsum(self.width[order]) - self.width[order]
        chunk_id = tokens_before // (CHUNK_BATCHES * self.budget)
        bounds = np.flatnonzero(np.diff(chunk_id)) + 1
        batches = []
        for chunk in np.split(order, bounds):
            chunk = chunk[np.argsort(-self.width[chunk], kind="stable")]
            batches += _cut_sorted(chunk, self.width, self.budget)
        return [batches[i] for i in rng.permutation(len(batches))]

    def efficiency(self, epoch: int | None = None) -> float:
        """Real tokens / processed (padded) tokens over an epoch's plan; no tokenizing involved."""
        real = processed = 0
        for b in self.plan(epoch):
            real += int(self.real[b].sum())
            processed += self.copies * len(b) * int(self.width[b].max())
        return real / processed

    @property
    def padding_efficiency(self) -> float:
        """efficiency() of the current epoch."""
        return self.efficiency()


def _first_fit(order: np.ndarray, width: np.ndarray, capacity: int, open_rows: int = 16) -> list:
    """Pack samples (in the given order) into rows of at most `capacity` tokens: each sample goes
    into the first of the last `open_rows` rows with room, else starts a new row."""
    rows, room = [], []
    for i in order:
        w = int(width[i])
        for r in range(max(0, len(rows) - open_rows), len(rows)):
            if room[r] >= w:
                rows[r].append(i)
                room[r] -= w
                break
        else:
            rows.append([i])
            room.append(capacity - w)
    return [np.array(r) for r in rows]


class SFTLoader(_BucketLoader):
    """Conversations cut to max_seq_len + 1 tokens; labels only where the mask says trained.

    pack=True (default): whole conversations, shuffled, are packed first-fit into rows of
    max_seq_len tokens and batch_size rows make a batch. Every batch then mixes all kinds of
    conversations (length-bucketing groups similar lengths, which in chat data means similar
    *kinds* — a batch of only tool calls, then one of only greetings — and with few steps each
    such batch drags the whole model its way). The batch carries `segments` (B, T): which
    conversation of the row each position belongs to (-1 for padding), so the objective can keep
    attention inside a conversation and restart positions at 0 for each. pack=False: the
    length-bucketed batches of _BucketLoader.
    """

    kind = "sft"

    def __init__(self, data: PreparedData, batch_size: int, max_seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1, pack: bool = True):
        self.pack = pack
        super().__init__(data, batch_size, max_seq_len, seed, rank, world_size)

    def _parts(self) -> list:
        return [self.data.docs]

    def _settings(self) -> dict:
        return {**super()._settings(), "pack": self.pack}

    def regroupable(self) -> bool:
        return self.pack  # packed rows do not depend on the batch size; length buckets do

    def _make_plan(self, rng):
        if not self.pack:
            return super()._make_plan(rng)
        rows = _first_fit(rng.permutation(self.usable), self.width, self.max_seq_len)
        return [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def efficiency(self, epoch: int | None = None) -> float:
        if not self.pack:
            return super().efficiency(epoch)
        real = processed = 0
        for batch in self.plan(epoch):
            widths = [int(self.width[r].sum()) for r in batch]
            real += sum(widths)
            processed += len(batch) * max(widths)
        return real / processed

    def _make_batch(self, entry) -> dict:
        if not self.pack:
            rows = list(_rows(self.data.docs, entry, self.max_seq_len))
            inputs, labels = _pad(rows, int(self.width[entry].max()), self.pad_id)
            return {"input_ids": inputs, "labels": labels, "n_tokens": (labels != IGNORE).sum()}
        width = max(int(self.width[r].sum()) for r in entry)
        inputs = np.full((len(entry), width), self.pad_id, dtype=np.int64)
        labels = np.full((len(entry), width), IGNORE, dtype=np.int64)
        segments = np.full((len(entry), width), -1, dtype=np.int64)
        for b, row in enumerate(entry):
            at = 0
            for seg, (x, y) in enumerate(_rows(self.data.docs, row, self.max_seq_len)):
                inputs[b, at:at + len(x)], labels[b, at:at + len(y)], segments[b, at:at + len(x)] = x, y, seg
                at += len(x)
        labels = torch.from_numpy(labels)
        return {"input_ids": torch.from_numpy(inputs), "labels": labels, "segments": torch.from_numpy(segments),
                "n_tokens": (labels != IGNORE).sum()}


class DPOLoader(_BucketLoader):
    """Preference pairs; chosen and rejected padded to the same length within a batch."""

    kind = "dpo"
    copies = 2

    def __init__(self, data: PreparedData, batch_size: int, max_seq_len: int, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        super().__init__(data, batch_size, max_seq_len, seed, rank, world_size)

    def _parts(self) -> list:
        return [self.data.chosen, self.data.rejected]

    def _make_batch(self, idx: np.ndarray) -> dict:
        width = int(self.width[idx].max())
        batch = {}
        for name in ("chosen", "rejected"):
            rows = list(_rows(self.data.parts[name], idx, self.max_seq_len))
            batch[f"{name}_input_ids"], batch[f"{name}_labels"] = _pad(rows, width, self.pad_id)
        batch["n_tokens"] = (batch["chosen_labels"] != IGNORE).sum() + (batch["rejected_labels"] != IGNORE).sum()
        batch["index"] = torch.from_numpy(idx.astype(np.int64))  # (B,) record indices (DPO's reference cache)
        return batch


# ----------------------------------------------------------------------------- choosing

LOADERS = {"pretrain": PretrainLoader, "sft": SFTLoader, "dpo": DPOLoader}


def make_loader(prepared: PreparedData | str | Path, batch_size: int, seq_len: int, seed: int = 0,
                rank: int = 0, world_size: int = 1):
    """The loader for a prepared dataset's kind; seq_len is the window (pretrain) or the
    maximum conversation length (sft, dpo)."""
    if not isinstance(prepared, PreparedData):
        prepared = load_prepared(prepared)
    return LOADERS[prepared.kind](prepared, batch_size, seq_len, seed=seed, rank=rank, world_size=world_size)
