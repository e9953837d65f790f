"""The generation engine's KV cache: one preallocated pool of fixed-size blocks (paged attention).

PagedAttention (Kwon et al. 2023, vLLM): instead of one contiguous (max_len) row per sequence,
keys and values live in blocks of `block_size` positions taken from a shared pool, and each
sequence owns a list of blocks (its block table). Position p of a sequence is stored at

    slot(p) = table[p // block_size] * block_size + p % block_size      in the flattened pool

so memory is bounded by the pool, not by (sequences x longest sequence), and a sequence can be as
long as the model's context while others are short. The engine reserves a request's blocks for
prompt + max_new_tokens when it admits it (so nothing is ever preempted) and queues requests
while the pool is full.

Layout: per layer one tensor k[l], v[l] of (num_blocks * block_size, g, hd) (separate tensors, so a
compiled decode step writes into each in place instead of copying a shared pool). Block 0 is
scratch, never handed out: block tables are padded with it (masked columns) and padding rows of a
fixed-shape batch write into it. Blocks are zeroed when allocated, so positions a row has not
written yet (masked out anyway) hold zeros, never a previous owner's numbers: a NaN left there
would survive the mask (0 * NaN = NaN) and leak one request's failure into another.

The interface is explicit: every forward gets a view built for that call alone, saying where each
new key goes and which blocks to read; nothing is remembered between calls but the keys and values.
A view implements the model's cache protocol `update(layer, k, v) -> (keys, values to attend over)`:

    PrefillView   one prompt: writes positions 0..T-1, attends over the prompt's own k, v (causal)
    DecodeView    n rows, one new token each at its own position: writes it, then gathers each
                  row's blocks into (n, g, nb * block_size, hd); the caller masks columns > position
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PagedKVCache:
    def __init__(self, config, num_blocks: int, block_size: int = 64, device="cpu", dtype=torch.float32):
        if num_blocks < 2:
            raise ValueError("a paged KV cache needs at least 2 blocks (block 0 is scratch)")
        self.block_size, self.num_blocks = block_size, num_blocks
        self.g, self.hd = config.num_key_value_heads, config.head_dim
        shape = (num_blocks * block_size, self.g, self.hd)
        # empty, not zeros: pages are touched only as blocks are used (allocate() zeroes them)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(config.num_hidden_layers)]
        self._zero([0])
        self._free = list(range(num_blocks - 1, 0, -1))  # a stack; block 0 is never free

    @staticmethod
    def bytes_per_token(config, dtype) -> int:
        """Keys + values of one position in every layer."""
        elem = torch.finfo(dtype).bits // 8
        return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * elem

    @classmethod
    def for_budget(cls, config, budget_bytes: int, block_size: int, device, dtype) -> "PagedKVCache":
        """As many blocks as fit in `budget_bytes` (plus the scratch block)."""
        per_block = cls.bytes_per_token(config, dtype) * block_size
        return cls(config, max(1, budget_bytes // per_block) + 1, block_size, device, dtype)

    # ------------------------------------------------------------------ allocation
    @property
    def capacity_blocks(self) -> int:
        return self.num_blocks - 1

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, n_positions: int) -> int:
        return -(-n_positions // self.block_size)

    def allocate(self, n_blocks: int) -> list[int] | None:
        """Take n blocks (zeroed), or None when fewer are free."""
        if n_blocks > len(self._free):
            return None
        blocks = [self._free.pop() for _ in range(n_blocks)]
        self._zero(blocks)
        return blocks

    def _zero(self, blocks: list[int]) -> None:
        idx = torch.tensor(blocks, device=self.k[0].device)
        for t in self.k + self.v:
            t.view(-1, self.block_size, self.g, self.hd)[idx] = 0

    def release(self, blocks: list[int]) -> None:
        self._free.extend(reversed(blocks))

    def copy_prefix(self, src: list[int], dst: list[int], length: int) -> None:
        """Copy positions [0, length) of the sequence owning `src` into the one owning `dst` (two
        requests with the same prompt share one prefill)."""
        s, d = self.slots(src, 0, length), self.slots(dst, 0, length)
        for t in self.k + self.v:
            t.index_copy_(0, d, t.index_select(0, s))

    # ------------------------------------------------------------------ per-call views
    def slots(self, blocks: list[int], start: int, end: int) -> torch.Tensor:
        """Flat pool slots of positions [start, end) of a sequence owning `blocks`."""
        p = torch.arange(start, end)
        table = torch.tensor(blocks)
        return (table[p // self.block_size] * self.block_size + p % self.block_size).to(self.k[0].device)

    def prefill_view(self, blocks: list[int], length: int) -> "PrefillView":
        return PrefillView(self.k, self.v, self.slots(blocks, 0, length))

    def decode_view(self, table: torch.Tensor, positions: torch.Tensor) -> "DecodeView":
        """table (n, nb) block ids (0-padded), positions (n,) where each row's new token goes."""
        bs = self.block_size
        slots = table.gather(1, (positions // bs)[:, None])[:, 0] * bs + positions % bs  # (n,)
        return DecodeView(self.k, self.v, slots, table, bs)


def _write(pool: torch.Tensor, slots: torch.Tensor, new: torch.Tensor) -> None:
    """pool (blocks * bs, g, hd) <- new (N, g, hd) at slots (N,), in place."""
    pool.index_copy_(0, slots, new.to(pool.dtype))


class PrefillView(NamedTuple):
    k: list[torch.Tensor]  # the pool, per layer (blocks * bs, g, hd)
    v: list[torch.Tensor]
    slots: torch.Tensor  # (T,) where positions 0..T-1 go

    def update(self, layer: int, k, v):
        """k, v (1, g, T, hd): store them; attend over exactly these (a fresh prompt has no past)."""
        _write(self.k[layer], self.slots, k[0].transpose(0, 1))  # (T, g, hd)
        _write(self.v[layer], self.slots, v[0].transpose(0, 1))
        return k, v


class DecodeView(NamedTuple):
    k: list[torch.Tensor]  # the pool, per layer (blocks * bs, g, hd)
    v: list[torch.Tensor]
    slots: torch.Tensor  # (n,) where each row's new key goes
    table: torch.Tensor  # (n, nb) the blocks each row reads, in order
    block_size: int

    def update(self, layer: int, k, v):
        """k, v (n, g, 1, hd) -> store; return each row's keys/values (n, g, nb * bs, hd)."""
        _write(self.k[layer], self.slots, k[:, :, 0])
        _write(self.v[layer], self.slots, v[:, :, 0])
        return self._gather(self.k[layer], k.dtype), self._gather(self.v[layer], v.dtype)

    def _gather(self, pool, dtype):
        n, nb = self.table.shape
        _, g, hd = pool.shape
        blocks = pool.view(-1, self.block_size * g * hd).index_select(0, self.table.flatten())  # (n * nb, bs*g*hd)
        return blocks.view(n, -1, g, hd).transpose(1, 2).to(dtype)  # (n, g, nb * bs, hd)
