"""The policy's forward in RL: log pi of every response token, each group's prompt computed once.

A rollout holds G responses y^1..y^G to one prompt x (a GRPO group). Agentic prompts are long (a
system message with tool schemas: ~90% of a trajectory's tokens), and the plain forward runs x G times.
In a causal decoder the prompt's positions never look at what follows them, so in every row of the
group they compute the same thing, and a response token reads x only through each layer's keys and
values of it:

    log pi(y^i_t | x, y^i_<t)  =  f( K_l(x), V_l(x) for every layer l ;  y^i_<=t )

So x runs once (one row, with gradients), each layer keeps K_l(x), V_l(x) (`PromptKV`), and the G
continuations run as one batch at positions |x| .. |x|+S-1, attending to [K_l(x); K_l(y^i)] (the whole
prompt, then their own tokens causally). The first response token is predicted at x's last position,
shared by the group. The loss is the same function of the parameters as with the plain forward, and its
gradient is the same too: backpropagation through a value used by G rows adds their G gradients, which
is what the G copies of x received. Float rounding differs (other matrix shapes): within 1e-5 in fp32,
tests/test_rl.py. Tokens computed: sum_g (|x_g| + G S_g) instead of sum_g G (|x_g| + S_g).

The same function, without gradients and in the training micro-batches' very shapes, scores log pi_old
(so the first ratio is exactly 1) and log pi_ref (the frozen reference).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ...model import _causal_mask
from .losses import token_entropy, token_logps


class PromptKV:
    """A model cache (the protocol of model.KVCache: `update(layer, k, v) -> keys, values to attend over`)
    for one prompt shared by a batch. While recording (the prompt's own forward) it keeps each layer's keys
    and values, gradients and all; once `shared`, a batch of continuations attends over those followed by
    its own."""

    def __init__(self):
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.shared = False

    def update(self, layer: int, k, v):
        if not self.shared:
            self.k[layer], self.v[layer] = k, v
            return k, v
        B = k.shape[0]
        return (torch.cat([self.k[layer].expand(B, -1, -1, -1), k], dim=2),
                torch.cat([self.v[layer].expand(B, -1, -1, -1), v], dim=2))


class PolicyForward(NamedTuple):
    logp: torch.Tensor  # (B, T-1) log pi of target t+1 (0 outside responses on the shared path)
    entropy: torch.Tensor | None  # (B, T-1) entropy of pi there, no gradient (when asked for)
    aux_loss: torch.Tensor | None  # MoE load balancing (None for dense models)
    hidden: torch.Tensor | None  # (B, T-1, d) final hidden states (plain forward only: PPO's value head)


def prompt_groups(input_ids, mask) -> list[tuple[int, list[int]]]:
    """[(prompt length P, rows)] of the rows that have a response target, grouped by equal prompts (the ids
    before their first response token; target t is token t+1, so the first target t0 gives P = t0 + 1)."""
    first = mask.float().argmax(1)
    groups: dict[tuple, list[int]] = {}
    for i in torch.nonzero(mask.any(1)).flatten().tolist():
        groups.setdefault(tuple(input_ids[i, :int(first[i]) + 1].tolist()), []).append(i)
    return [(len(p), rows) for p, rows in groups.items()]


def policy_forward(model, input_ids, mask, temperature: float, share: bool = True,
                   entropy: bool = False) -> PolicyForward:
    """log pi(target) for input_ids (B, T), with the response targets `mask` (B, T-1).

    share: run each group's prompt once (the module docstring) where some rows share a prompt; otherwise,
    or where no two rows do, the plain forward over whole rows."""
    groups = prompt_groups(input_ids, mask) if share else []
    if not any(len(rows) > 1 for _, rows in groups):
        out = model(input_ids[:, :-1])
        logp = token_logps(out.logits, input_ids[:, 1:], temperature)
        ent = None
        if entropy:
            with torch.no_grad():
                ent = token_entropy(out.logits, temperature)
        return PolicyForward(logp, ent, out.aux_loss, out.hidden)

    B, T = input_ids.shape
    logp = torch.zeros((B, T - 1), device=input_ids.device)
    ent = torch.zeros((B, T - 1), device=input_ids.device) if entropy else None
    aux, aux_tokens = None, 0
    cols = torch.arange(T - 1, device=mask.device)
    for P, rows in groups:
        last = max(int(cols[mask[i] > 0].max()) for i in rows)  # the group's last target
        ids = input_ids[rows, :last + 2]  # (G, last + 2): inputs 0..last, targets 1..last+1
        cache = PromptKV()
        head = model(ids[:1, :P], cache=cache, logits_to_keep=1)  # x once; predicts the first reply token
        parts, auxes = [head.logits.expand(len(rows), -1, -1)], [(head.aux_loss, P)]
        S = last + 1 - P  # continuation inputs P..last
        if S > 0:
            cache.shared = True
            pos = torch.arange(P, P + S, device=ids.device).expand(len(rows), S)
            tail = model(ids[:, P:last + 1], position_ids=pos, mask=_causal_mask(S, P, ids.device), cache=cache)
            parts.append(tail.logits)
            auxes.append((tail.aux_loss, len(rows) * S))
        logits = torch.cat(parts, dim=1)  # (G, S + 1, V): targets P-1 .. last
        idx = torch.tensor(rows, device=input_ids.device)
        logp[idx, P - 1:last + 1] = token_logps(logits, ids[:, P:last + 2], temperature)
        if entropy:
            with torch.no_grad():
                ent[idx, P - 1:last + 1] = token_entropy(logits, temperature)
        for a, n in auxes:  # MoE: the load-balancing loss averaged over the tokens routed
            if a is not None:
                aux = a * n if aux is None else aux + a * n
                aux_tokens += n
    return PolicyForward(logp, ent, None if aux is None else aux / aux_tokens, None)
