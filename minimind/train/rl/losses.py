"""The pieces every policy-gradient objective is built from, each a small tensor function.

Notation (all per token t of a sampled response y to a prompt x; masks select response tokens):

    log-prob        log pi(y_t | x, y_<t) = log_softmax(z_t / tau)[y_t]     z: logits, tau: sampling temperature
    ratio           r_t = pi_theta(y_t) / pi_old(y_t) = exp(log pi_theta - log pi_old)
    KL estimators   with d_t = log pi_ref(y_t) - log pi_theta(y_t), tokens sampled from pi_theta (Schulman 2020,
                    "Approximating KL Divergence"):
                        k1_t = -d_t                  unbiased for KL(pi_theta || pi_ref), noisy, can be < 0
                        k3_t = exp(d_t) - d_t - 1    unbiased, always >= 0, low variance (the one we optimise)
    group advantage A_i = (R_i - mean_group R) / (std_group R + eps)        (GRPO, Shao et al. 2024)
    GAE             delta_t = r_t + gamma V_{t+1} - V_t,  A_t = sum_l (gamma lambda)^l delta_{t+l}
                    (Schulman et al. 2016), returns G_t = A_t + V_t
    clipped term    min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t)          (PPO, Schulman et al. 2017)
    CISPO term      sg(min(r_t, 1 + eps_high)) A_t log pi_theta(y_t)        (MiniMax-M1, 2025; sg = stop-gradient)

Why the temperature matters: rollouts are sampled from softmax(z / tau); the "old" log-probs and the
new ones must be computed under that same distribution, or the ratio is not the importance weight
of what was sampled (and with one update per rollout it is then never != 1, so clipping never acts).
RL sampling therefore uses temperature only (no top-k / top-p truncation, whose support would move
with theta) and every log-prob here is log_softmax(z / tau).

Reductions (`reduce_loss`). "token": sum over all response tokens of the step / their number, so
every generated token weighs the same and long answers are not down-weighted per token (the length
bias Dr. GRPO, Liu et al. 2025, found in per-sequence averaging); "sequence": each sequence's token
mean, averaged over sequences (the original GRPO formulation). Token level is the default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_logps(logits, tokens, temperature: float = 1.0):
    """log softmax(logits / temperature)[token] per position. logits (B, T, V), tokens (B, T) -> (B, T)."""
    z = logits.float() / temperature  # (B, T, V)
    return -F.cross_entropy(z.reshape(-1, z.shape[-1]), tokens.reshape(-1), reduction="none").view(tokens.shape)


def token_entropy(logits, temperature: float = 1.0):
    """Entropy of softmax(logits / temperature) per position: (B, T, V) -> (B, T)."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def kl_k1(logp, ref_logp):
    """k1 = log pi - log pi_ref per token; its mean estimates KL(pi || pi_ref) (> 0 when pi moved away)."""
    return logp - ref_logp


def kl_k3(logp, ref_logp):
    """k3 = exp(ref - logp) - (ref - logp) - 1 per token: >= 0, unbiased for KL(pi || pi_ref)."""
    d = (ref_logp - logp).clamp(-20.0, 20.0)  # exp of a huge gap would overflow; the value is huge anyway
    return torch.exp(d) - d - 1.0


def masked_mean(x, mask):
    """Mean of x over the positions where mask is 1 (0 when there are none): for metrics."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def reduce_loss(per_token, mask, level: str, denominator):
    """Sum of per-token losses divided by a denominator fixed for the whole optimizer step.

    level "token": denominator = number of response tokens in the step (all micro-batches, all ranks);
    level "sequence": each sequence's tokens weigh 1/len(sequence), denominator = number of sequences.
    A fixed denominator makes micro-batching and data parallelism exact: the step's gradient equals
    the gradient of one big batch (see rollout.py, which computes it).
    """
    mask = mask.to(per_token.dtype)
    if level == "sequence":
        mask = mask / mask.sum(-1, keepdim=True).clamp(min=1.0)
    elif level != "token":
        raise ValueError(f"level must be 'token' or 'sequence', got {level!r}")
    return (per_token * mask).sum() / denominator


# ----------------------------------------------------------------------------- advantages (g)

def group_advantages(rewards, group_size: int, eps: float = 1e-4, scale: bool = True):
    """(R - mean) / (std + eps) within consecutive groups of `group_size` samples. rewards (N,) -> (N,).

    std is the population std of the group (unbiased=False); a group whose rewards are all equal
    gets zero advantages (it carries no signal - see dynamic sampling in rollout.py).
    """
    r = rewards.float().view(-1, group_size)  # (P, G)
    centered = r - r.mean(-1, keepdim=True)  # (P, G)
    if scale:
        std = r.std(-1, unbiased=False, keepdim=True)  # (P, 1)
        centered = torch.where(std > 0, centered / (std + eps), torch.zeros_like(centered))
    return centered.view(-1)


def gae(rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
    """Generalised advantage estimation over each row's masked (response) positions.

    rewards, values (B, T): per-token reward r_t and value V_t, meaningful where mask (B, T) is 1
    (a contiguous span per row). V after the last response token is 0 (the episode ends).
    Returns (advantages, returns), each (B, T), zero outside the mask.
    """
    B, T = rewards.shape
    m = mask.float()
    adv = torch.zeros_like(rewards, dtype=torch.float32)
    next_value = torch.zeros(B, device=rewards.device)
    running = torch.zeros(B, device=rewards.device)
    for t in reversed(range(T)):
        delta = rewards[:, t].float() + gamma * next_value - values[:, t].float()
        running = delta + gamma * lam * running
        running = running * m[:, t]  # positions outside the response neither score nor carry
        adv[:, t] = running
        next_value = torch.where(m[:, t] > 0, values[:, t].float(), torch.zeros_like(next_value))
    return adv, (adv + values.float()) * m


# ----------------------------------------------------------------------------- policy terms (f)

def clipped_surrogate(logp, old_logp, adv, eps_low: float = 0.2, eps_high: float = 0.2):
    """Per-token min(r A, clip(r, 1-eps_low, 1+eps_high) A) (to maximise) and whether it was clipped."""
    ratio = torch.exp(logp - old_logp)
    clipped_ratio = ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    unclipped, clipped = ratio * adv, clipped_ratio * adv
    return torch.minimum(unclipped, clipped), (clipped < unclipped)


def cispo_term(logp, old_logp, adv, eps_high: float = 0.2, eps_low: float | None = None):
    """Per-token sg(clip(r, 1-eps_low, 1+eps_high)) A log pi (to maximise) and whether the weight was capped.

    Unlike PPO, a capped token still gets a gradient (through log pi), only its weight is bounded.
    eps_low None: no lower bound (the MiniMax-M1 default).
    """
    ratio = torch.exp(logp - old_logp).detach()
    lo = 0.0 if eps_low is None else 1.0 - eps_low
    weight = ratio.clamp(lo, 1.0 + eps_high)
    return weight * adv * logp, (weight != ratio)


def reinforce_term(logp, adv):
    """Per-token A log pi (vanilla policy gradient, Williams 1992): SPO's policy term."""
    return adv * logp


def value_loss(values, old_values, returns, clip: float | None = 0.2):
    """Per-token 0.5 max((V - G)^2, (clip(V, V_old +- clip) - G)^2) (PPO's clipped value loss)."""
    loss = (values - returns) ** 2
    if clip:
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        loss = torch.maximum(loss, (v_clipped - returns) ** 2)
    return 0.5 * loss
