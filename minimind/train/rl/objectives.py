"""PPO, GRPO, SPO and CISPO as small objectives of one policy-gradient family.

Every algorithm maximises, over sampled response tokens y_t (losses.py has the notation),

    J(theta) = E_t[ f(r_t, A_t) ] - E_t[ h_t ]          loss = -J, reduced per token (default) or per sequence

and differs only in its policy term f, its advantage g (how A_t is estimated) and its regulariser h:

    algorithm  f (policy term)                          g (advantage)                          h (regulariser)
    PPO        min(r A, clip(r, 1-e, 1+e) A)            GAE(gamma, lambda) on r_t = -beta k1_t  KL inside the reward,
               + c_v * clipped value loss               + R at the last token; V from a value   none in the loss
                                                        head on the policy's last hidden state
    GRPO       min(r A, clip(r, 1-e, 1+e) A)            (R - mean_group) / std_group            beta * k3_t
    SPO        A log pi                                 R - v(x), v tracked per prompt across   beta * k3_t
                                                        rollouts (no groups, no critic)
    CISPO      sg(min(r, 1+e_high)) A log pi            (R - mean_group) / std_group            beta * k3_t
    (DPO, for comparison: -log sigmoid(beta [log r_w - log r_l]); implicit advantage and KL - train/dpo.py)

References: PPO - Schulman et al. 2017 and, for language models, Ouyang et al. 2022 (InstructGPT);
GRPO - Shao et al. 2024 (DeepSeekMath); SPO - Xu & Ding 2025, "Single-stream Policy Optimization";
CISPO - MiniMax 2025, "MiniMax-M1"; GAE - Schulman et al. 2016.

The rollout source (rollout.py) samples responses, scores them, calls `objective.advantages(...)` once
per rollout (g), and then feeds minibatches to the one training engine, which calls `loss` (f and h).
A minibatch is a dict of tensors, every per-token tensor of shape (B, T-1) aligned with the targets
input_ids[:, 1:] (position t predicts token t+1):

    input_ids (B, T)   prompt + response (+ its closing <|im_end|>), right-padded
    mask               1 on response targets (the tokens the policy produced)
    old_logp           log pi_old(y_t): the policy that sampled, before this rollout's updates. Absent
                       when a rollout makes one optimizer step and the objective needs it only in the
                       loss: pi_old is then the very policy being trained, log pi_old = logp.detach()
    ref_logp           log pi_ref(y_t): the frozen reference
    adv                A_t                     (PPO also: returns, old_values)
    denominator        the step's token (or sequence) count over all micro-batches and ranks, divided by
                       micro-batches x ranks, so the engine's averaging gives exactly one big batch's loss
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .forward import policy_forward
from .losses import (cispo_term, clipped_surrogate, gae, group_advantages, kl_k1, kl_k3, masked_mean,
                     reduce_loss, reinforce_term, value_loss)

LEVELS = ("token", "sequence")


class PolicyGradient:
    """The shared part: loss = -(f - h), reduced; metrics. Subclasses define f (`policy_term`) and g."""

    name = "pg"
    uses_groups = True  # rollouts of several samples per prompt (GRPO, CISPO); False: one per prompt
    # log pi_old of the rollout is read before training (PPO's GAE, SPO's drift probe), so it is always
    # scored; otherwise a rollout of one optimizer step takes it from the training forward itself
    needs_old_logp_first = False
    # the training forward runs a prompt once for all the rows that share it (forward.py); PPO reads a
    # value at every position of every row, so it keeps the plain forward
    share_prompts = True

    def __init__(self, temperature: float = 1.0, beta: float = 0.02, eps_low: float = 0.2,
                 eps_high: float = 0.2, level: str = "token"):
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
        self.temperature, self.beta = float(temperature), float(beta)
        self.eps_low, self.eps_high, self.level = float(eps_low), float(eps_high), level

    # -- g: advantages, once per rollout ------------------------------------------------------------
    def advantages(self, rollout: dict, model=None) -> None:
        """Fill rollout["adv"] (N, T-1) from rollout["rewards"] (N,); group-relative by default."""
        a = group_advantages(rollout["rewards"], rollout["group_size"])  # (N,)
        rollout["adv"] = a[:, None] * rollout["mask"]

    @staticmethod
    def old_logp(logp, batch):
        """log pi_old: the rollout's, or, where the rollout did not score it (one optimizer step per
        rollout: pi_old is the policy being trained), this forward's own, detached."""
        old = batch.get("old_logp")
        return logp.detach() if old is None else old

    # -- f: the policy term, per token (to maximise) -------------------------------------------------
    def policy_term(self, logp, batch):
        return clipped_surrogate(logp, self.old_logp(logp, batch), batch["adv"], self.eps_low, self.eps_high)

    # -- h: the regulariser, per token --------------------------------------------------------------
    def regulariser(self, logp, batch):
        return self.beta * kl_k3(logp, batch["ref_logp"]) if self.beta else torch.zeros_like(logp)

    def forward(self, model, batch, entropy: bool = False):
        """forward.PolicyForward: log pi of the targets (B, T-1), each group's prompt run once where rows
        share it (forward.py; same loss and gradient as the plain forward), the entropy if asked for."""
        return policy_forward(model, batch["input_ids"], batch["mask"], self.temperature, self.share_prompts,
                              entropy)

    def loss(self, model, batch):
        mask = batch["mask"]
        fwd = self.forward(model, batch, entropy=True)
        f, clipped = self.policy_term(fwd.logp, batch)
        h = self.regulariser(fwd.logp, batch)
        loss = reduce_loss(-(f - h), mask, self.level, batch["denominator"])
        if fwd.aux_loss is not None:  # MoE load balancing
            loss = loss + fwd.aux_loss
        return loss, self.metrics(fwd, batch, clipped)

    def metrics(self, fwd, batch, clipped) -> dict:
        """Per micro-batch: KL (both estimators), clip fraction, ratio, entropy; plus the rollout's stats."""
        mask, logp = batch["mask"], fwd.logp
        with torch.no_grad():
            return {**batch.get("stats", {}), "n_tokens": mask.sum(),
                    "kl_k1": masked_mean(kl_k1(logp, batch["ref_logp"]), mask),  # KL(pi || pi_ref), sign right
                    "kl_k3": masked_mean(kl_k3(logp, batch["ref_logp"]), mask),
                    "clip_frac": masked_mean(clipped.float(), mask),
                    "ratio": masked_mean(torch.exp(logp - self.old_logp(logp, batch)), mask),
                    "entropy": masked_mean(fwd.entropy, mask)}

    # the engine moves / saves / restores objectives through these (no state by default)
    def to(self, device):
        return self

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GRPO(PolicyGradient):
    """Group Relative Policy Optimization: clipped ratio, group-normalised reward, beta k3 in the loss."""

    name = "grpo"


class CISPO(PolicyGradient):
    """Clipped IS-weight Policy Optimization: every token keeps its gradient; only its IS weight is capped."""

    name = "cispo"

    def __init__(self, temperature: float = 1.0, beta: float = 0.0, eps_high: float = 0.2,
                 eps_low: float | None = None, level: str = "token"):
        super().__init__(temperature, beta, 0.0 if eps_low is None else eps_low, eps_high, level)
        self.cispo_eps_low = eps_low

    def policy_term(self, logp, batch):
        return cispo_term(logp, self.old_logp(logp, batch), batch["adv"], self.eps_high, self.cispo_eps_low)


class SPO(PolicyGradient):
    """Single-stream Policy Optimization: one sample per prompt, baseline v(x) tracked across rollouts.

    For each prompt x the tracker keeps a discounted Beta posterior of its (0..1-scaled) reward:

        v(x) = alpha(x) / (alpha(x) + beta(x))            baseline used for the advantage A = R - v(x)
        alpha <- rho alpha + R,  beta <- rho beta + (1 - R)       after each visit
        rho   = clip(2^(-D(x) / D_half), rho_min, rho_max)

    D(x) is how far the policy has moved since x was last seen: the engine-wide drift counter (sum of
    per-rollout KL(pi_previous || pi_now) estimates, `record_drift`) minus its value at that visit. A
    prompt seen for the first time starts from the running mean over all prompts (weight `prior_n`).
    Advantages are then normalised over the batch (mean 0, std 1), as in the paper.
    """

    name = "spo"
    uses_groups = False
    needs_old_logp_first = True

    def __init__(self, temperature: float = 1.0, beta: float = 0.02, level: str = "token",
                 d_half: float = 0.06, rho_min: float = 0.5, rho_max: float = 0.96, prior_n: float = 2.0):
        super().__init__(temperature, beta, level=level)
        self.d_half, self.rho_min, self.rho_max, self.prior_n = d_half, rho_min, rho_max, prior_n
        self.table: dict[str, list[float]] = {}  # prompt key -> [alpha, beta, drift at last visit]
        self.drift = 0.0  # accumulated KL(pi_previous || pi_now) over the run
        self.global_mean, self.global_n = 0.5, 0

    def baseline(self, key: str) -> float:
        if key in self.table:
            a, b, _ = self.table[key]
            return a / (a + b)
        return self.global_mean

    def rho(self, key: str) -> float:
        d = self.drift - self.table[key][2]
        return min(self.rho_max, max(self.rho_min, 2.0 ** (-d / self.d_half)))

    def update(self, key: str, reward: float) -> None:
        if key not in self.table:
            m = self.global_mean
            self.table[key] = [m * self.prior_n, (1 - m) * self.prior_n, self.drift]
        rho = self.rho(key)
        a, b, _ = self.table[key]
        self.table[key] = [rho * a + reward, rho * b + (1.0 - reward), self.drift]
        self.global_n += 1
        self.global_mean += (reward - self.global_mean) / min(self.global_n, 100)  # a slow running mean

    def record_drift(self, kl: float) -> None:
        """Add one KL(pi_previous || pi_now) estimate (the rollout source measures it between rollouts)."""
        self.drift += max(0.0, float(kl))

    def advantages(self, rollout: dict, model=None) -> None:
        rewards = rollout["rewards"].float()  # (N,) in [0, 1] (rewards are scaled by the source)
        base = torch.tensor([self.baseline(k) for k in rollout["keys"]], dtype=torch.float32,
                            device=rewards.device)
        a = rewards - base  # A = R - v(x), v before this visit
        for k, r in zip(rollout["keys"], rewards.tolist()):
            self.update(k, r)
        if a.numel() > 1:
            a = (a - a.mean()) / (a.std(unbiased=False) + 1e-4)
        rollout["adv"] = a[:, None] * rollout["mask"]
        rollout["baseline_mean"] = float(base.mean())

    def policy_term(self, logp, batch):
        return reinforce_term(logp, batch["adv"]), torch.zeros_like(logp, dtype=torch.bool)

    def state_dict(self) -> dict:
        return {"table": dict(self.table), "drift": self.drift, "global_mean": self.global_mean,
                "global_n": self.global_n}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.table = {k: list(v) for k, v in state["table"].items()}
            self.drift, self.global_mean, self.global_n = state["drift"], state["global_mean"], state["global_n"]


class PPO(PolicyGradient):
    """Proximal Policy Optimization with GAE and a value head on the policy's last hidden state.

    The critic is a linear value head V(h_t) = w . h_t + b on the policy trunk's final (already
    RMS-normalised) hidden state, not a second model: on a CPU a separate critic would double every
    forward and backward pass, and a linear head on normalised features needs no norm of its own.
    Its parameters belong to this objective (`parameters()`), are trained with the policy by the
    same optimizer, and are saved in the run's resume state (a checkpoint stays a plain model).

    Per-token reward (InstructGPT): r_t = -beta k1_t, plus the sequence reward R on the last
    response token; A_t, G_t = GAE(r, V; gamma, lambda); loss = -clipped surrogate + c_v value loss.
    """

    name = "ppo"
    uses_groups = False
    needs_old_logp_first = True
    share_prompts = False

    def __init__(self, hidden_size: int, temperature: float = 1.0, beta: float = 0.02, eps: float = 0.2,
                 gamma: float = 1.0, lam: float = 0.95, value_coef: float = 0.5, value_clip: float = 0.2,
                 level: str = "token"):
        super().__init__(temperature, beta, eps, eps, level)
        self.gamma, self.lam, self.value_coef, self.value_clip = gamma, lam, value_coef, value_clip
        self.value_head = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def parameters(self):
        return list(self.value_head.parameters())

    def to(self, device):
        self.value_head.to(device)
        return self

    def values(self, hidden):
        """V for every position: hidden (B, T-1, d) -> (B, T-1), in fp32 (outside any bf16 autocast)."""
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            return self.value_head(hidden.float()).squeeze(-1)

    @torch.no_grad()
    def advantages(self, rollout: dict, model=None) -> None:
        """GAE on per-token rewards; needs the values of the rollout (rollout["old_values"])."""
        mask = rollout["mask"].float()  # (N, T-1)
        rewards = -self.beta * kl_k1(rollout["old_logp"], rollout["ref_logp"]) * mask
        last = mask.cumsum(-1).argmax(-1)  # index of each row's last response target
        rewards[torch.arange(mask.shape[0]), last] += rollout["rewards"].float()
        adv, returns = gae(rewards, rollout["old_values"], mask, self.gamma, self.lam)
        # whiten advantages over the rollout's tokens (standard PPO practice)
        mu = masked_mean(adv, mask)
        sd = masked_mean((adv - mu) ** 2, mask).sqrt()
        rollout["adv"] = (adv - mu) / (sd + 1e-8) * mask
        rollout["returns"] = returns

    def regulariser(self, logp, batch):
        return torch.zeros_like(logp)  # the KL lives in the reward (see advantages)

    def loss(self, model, batch):
        mask = batch["mask"]
        fwd = self.forward(model, batch, entropy=True)
        f, clipped = self.policy_term(fwd.logp, batch)
        v = self.values(fwd.hidden)  # (B, T-1)
        vl = value_loss(v, batch["old_values"], batch["returns"], self.value_clip)
        loss = reduce_loss(-f + self.value_coef * vl, mask, self.level, batch["denominator"])
        if fwd.aux_loss is not None:
            loss = loss + fwd.aux_loss
        m = self.metrics(fwd, batch, clipped)
        m["value_loss"] = masked_mean(vl.detach(), mask)
        return loss, m

    def state_dict(self) -> dict:
        return {"value_head": {k: v.detach().cpu() for k, v in self.value_head.state_dict().items()}}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.value_head.load_state_dict(state["value_head"])


ALGORITHMS = {"grpo": GRPO, "ppo": PPO, "spo": SPO, "cispo": CISPO}


def sequence_drift_kl(prev_logp, now_logp, mask) -> float:
    """KL(pi_previous || pi_now) estimated with k3 on tokens sampled from pi_previous."""
    d = (now_logp - prev_logp).clamp(-20, 20)
    return float(masked_mean(torch.exp(d) - d - 1.0, mask))

