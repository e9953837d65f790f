"""Muon: momentum + orthogonalisation for the hidden weight matrices (Jordan et al. 2024).

For each 2-D hidden weight W (attention and MLP projections) with gradient G:

    M <- mu * M + G                              momentum buffer
    U  = M + mu * (M_new) if nesterov            (Nesterov look-ahead: G + mu * M)
    O  = NewtonSchulz5(U) ~ U V^T  for U = U S V^T   the nearest semi-orthogonal matrix
    W <- W * (1 - lr * wd) - lr * max(1, rows/cols)^0.5 * O

NewtonSchulz5 runs five iterations of the quintic X <- a X + (b X X^T + c (X X^T)^2) X with
(a, b, c) = (3.4445, -4.7750, 2.0315) on X = U / ||U||_F, in bf16; it pushes every singular value
towards ~1 without computing an SVD. Embeddings, the LM head, norms and biases (and MoE routers) are
not "hidden matrices" and stay with AdamW, as in modded-nanogpt and nanochat. `build_muon` returns one
optimizer object that steps both.
"""

from __future__ import annotations

import torch

from .engine import param_groups


def newton_schulz5(G, steps: int = 5, eps: float = 1e-7):
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16()
    transposed = X.size(0) > X.size(1)
    if transposed:  # iterate on the wide orientation: X X^T is the smaller Gram matrix
        X = X.T
    X = X / (X.norm() + eps)
    for _ in range(steps):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return (X.T if transposed else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(g))
                buf.mul_(group["momentum"]).add_(g)
                u = g.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                o = newton_schulz5(u)
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(o, alpha=-group["lr"] * scale)


class Combined(torch.optim.Optimizer):
    """Several optimizers stepped as one (so the engine, scheduler and checkpoints see one object)."""

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]
        self.defaults = {}
        self.state = {}

    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state):
        for o, s in zip(self.optimizers, state["optimizers"]):
            o.load_state_dict(s)


def is_hidden_matrix(name: str, p) -> bool:
    return p.ndim == 2 and "embed_tokens" not in name and "lm_head" not in name and not name.endswith("mlp.gate.weight") \
        and "shared_expert_gate" not in name


def build_muon(model, cfg, extra=()):
    """Muon for hidden matrices (lr = cfg.muon_lr), AdamW (lr = cfg.lr) for everything else
    (and for `extra`, an objective's own parameters, without weight decay)."""
    hidden, seen = [], set()
    for name, p in model.named_parameters():
        if p.requires_grad and is_hidden_matrix(name, p) and id(p) not in seen:
            hidden.append(p)
            seen.add(id(p))
    rest = [{"params": [p for p in g["params"] if id(p) not in seen], "weight_decay": g["weight_decay"]}
            for g in param_groups(model, cfg.weight_decay)]
    if extra:
        rest.append({"params": list(extra), "weight_decay": 0.0})
    kw = {"fused": True} if next(model.parameters()).is_cuda else {"foreach": True}
    adam = torch.optim.AdamW(rest, lr=cfg.lr, betas=tuple(cfg.betas), **kw)
    muon = Muon(hidden, lr=cfg.muon_lr, weight_decay=0.0)
    return Combined([muon, adam])
