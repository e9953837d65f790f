"""Each RL loss piece equals its formula on hand-made tensors (ratios != 1, clipping active, caps, GAE)."""

import math

import pytest
import torch

from minimind.train.rl.losses import (cispo_term, clipped_surrogate, gae, group_advantages, kl_k1, kl_k3,
                                      reduce_loss, token_entropy, token_logps, value_loss)
from minimind.train.rl.objectives import CISPO, GRPO, PPO, SPO, sequence_drift_kl


def test_token_logps_is_log_softmax_at_the_temperature():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    tokens = torch.tensor([[0, 4, 2], [1, 1, 3]])
    got = token_logps(logits, tokens, temperature=0.7)
    for b in range(2):
        for t in range(3):
            z = logits[b, t] / 0.7
            want = z[tokens[b, t]] - torch.logsumexp(z, 0)
            assert got[b, t].item() == pytest.approx(want.item(), abs=1e-6)
    p = torch.softmax(logits / 0.7, -1)
    assert torch.allclose(token_entropy(logits, 0.7), -(p * p.log()).sum(-1), atol=1e-6)


def test_kl_estimators_have_the_right_sign_and_expectation():
    # p = pi (sampling), q = pi_ref; E_p[k1] = E_p[k3] = KL(p || q) > 0
    p = torch.tensor([0.6, 0.3, 0.1])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl = float((p * (p / q).log()).sum())
    g = torch.Generator().manual_seed(0)
    y = torch.multinomial(p, 200_000, replacement=True, generator=g)
    logp, ref = p.log()[y], q.log()[y]
    assert kl > 0
    assert float(kl_k1(logp, ref).mean()) == pytest.approx(kl, rel=0.02)
    assert float(kl_k3(logp, ref).mean()) == pytest.approx(kl, rel=0.02)
    assert float(kl_k3(logp, ref).min()) >= 0.0
    # by hand for one token: d = ref - logp
    d = math.log(0.2) - math.log(0.6)
    assert float(kl_k3(torch.tensor(math.log(0.6)), torch.tensor(math.log(0.2)))) == pytest.approx(
        math.exp(d) - d - 1)


def test_group_advantages_normalise_within_groups_and_zero_constant_groups():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 3.0])
    a = group_advantages(r, 4, eps=0.0)
    assert a[:4].tolist() == pytest.approx([1, -1, -1, 1])
    assert a[4:8].tolist() == [0, 0, 0, 0]
    # [0, 0, 0, 3]: mean .75, population std sqrt(27/16)
    sd = math.sqrt(((0.75 ** 2) * 3 + 2.25 ** 2) / 4)
    assert a[8:].tolist() == pytest.approx([-0.75 / sd] * 3 + [2.25 / sd])


def test_gae_matches_a_hand_computation():
    gamma, lam = 0.9, 0.8
    # one row: prompt positions 0-1 (masked out), response 2-4, padding 5
    mask = torch.tensor([[0, 0, 1, 1, 1, 0]], dtype=torch.float32)
    r = torch.tensor([[5.0, 5.0, 0.1, -0.2, 1.0, 7.0]])  # junk outside the mask must not leak in
    v = torch.tensor([[9.0, 9.0, 0.5, 0.4, 0.3, 9.0]])
    adv, ret = gae(r * mask, v, mask, gamma, lam)
    d4 = 1.0 + gamma * 0.0 - 0.3
    d3 = -0.2 + gamma * 0.3 - 0.4
    d2 = 0.1 + gamma * 0.4 - 0.5
    a4 = d4
    a3 = d3 + gamma * lam * a4
    a2 = d2 + gamma * lam * a3
    assert adv[0].tolist() == pytest.approx([0, 0, a2, a3, a4, 0], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0, 0, a2 + 0.5, a3 + 0.4, a4 + 0.3, 0], abs=1e-6)
    # gamma = lambda = 1, V = 0: the advantage is the reward-to-go
    adv1, _ = gae(torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 3), torch.ones(1, 3), 1.0, 1.0)
    assert adv1[0].tolist() == [6.0, 5.0, 3.0]


def test_clipped_surrogate_clips_both_ways():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1]))  # ratios vs old = 0
    old = torch.zeros(5)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    f, clipped = clipped_surrogate(logp, old, adv, 0.2, 0.2)
    # A>0: min(1.5, 1.2)=1.2 (clipped), min(0.5, 0.8)=0.5; A<0: min(-1.5, -1.2)=-1.5, min(-0.5, -0.8)=-0.8
    assert f.tolist() == pytest.approx([1.2, 0.5, -1.5, -0.8, 2.2])
    assert clipped.tolist() == [True, False, False, True, False]
    # a clipped token gets no gradient, an unclipped one gets r * A
    lp = logp.clone().requires_grad_(True)
    clipped_surrogate(lp, old, adv, 0.2, 0.2)[0].sum().backward()
    assert lp.grad.tolist() == pytest.approx([0.0, 0.5, -1.5, 0.0, 2.2])


def test_cispo_caps_the_weight_but_keeps_the_gradient():
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1])).requires_grad_(True)
    old = torch.zeros(3)
    adv = torch.tensor([1.0, -2.0, 1.0])
    f, capped = cispo_term(logp, old, adv, eps_high=0.2)
    assert capped.tolist() == [True, False, False]
    assert f.tolist() == pytest.approx([1.2 * math.log(1.5), -2.0 * 0.5 * math.log(0.5), 1.1 * math.log(1.1)])
    f.sum().backward()  # d/dlogp of sg(w) A logp = w A, also for the capped token
    assert logp.grad.tolist() == pytest.approx([1.2, -1.0, 1.1])


def test_reduce_loss_token_and_sequence_levels():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert reduce_loss(x, m, "token", 4.0).item() == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert reduce_loss(x, m, "sequence", 2.0).item() == pytest.approx((2.0 + 4.0) / 2)


def test_value_loss_is_clipped_around_the_old_value():
    v, old, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.0, 1.0])
    # first: clipped V = 0.2 -> max(1, 0.04) = 1; second: max(1, 0.64) = 1
    assert value_loss(v, old, ret, 0.2).tolist() == pytest.approx([0.5, 0.5])
    v2 = torch.tensor([0.5])  # V moved towards the return 1 beyond the clip: the clipped error counts
    assert value_loss(v2, torch.tensor([0.0]), torch.tensor([1.0]), 0.2).item() == pytest.approx(0.5 * 0.64)


def _batch(logp_old, adv, ref=None):
    B, T = adv.shape
    return {"input_ids": torch.zeros(B, T + 1, dtype=torch.long), "mask": torch.ones(B, T),
            "old_logp": logp_old, "ref_logp": logp_old if ref is None else ref, "adv": adv,
            "denominator": torch.tensor(float(B * T))}


def test_grpo_at_ratio_one_is_the_policy_gradient_plus_k3():
    torch.manual_seed(0)
    logp = torch.randn(2, 3).requires_grad_(True)
    old = logp.detach().clone()
    ref = old - 0.3
    adv = torch.tensor([[1.0] * 3, [-1.0] * 3])
    obj = GRPO(beta=0.1)
    b = _batch(old, adv, ref)
    f, _ = obj.policy_term(logp, b)
    h = obj.regulariser(logp, b)
    loss = reduce_loss(-(f - h), b["mask"], "token", b["denominator"])
    loss.backward()
    # d/dlogp [-(r A) + beta (e^d - d - 1)] with r = 1, d = ref - logp: -A + beta (1 - e^d)
    want = (-adv + 0.1 * (1 - torch.exp(ref - old))) / 6
    assert torch.allclose(logp.grad, want, atol=1e-6)


def test_spo_tracker_updates_the_baseline_by_its_formula():
    spo = SPO(d_half=0.1, rho_min=0.5, rho_max=0.96, prior_n=2.0)
    spo.global_mean = 0.5
    roll = {"rewards": torch.tensor([1.0]), "keys": ["q1"], "mask": torch.ones(1, 2)}
    spo.advantages(roll)
    # first visit: baseline = global mean 0.5; table starts at (1, 1), drift 0 -> rho = rho_max
    assert spo.table["q1"][:2] == pytest.approx([0.96 * 1 + 1.0, 0.96 * 1 + 0.0])
    spo.record_drift(0.1)  # the policy moved by D_half: rho = 2^-1 = 0.5 at the next visit
    a, b = spo.table["q1"][:2]
    assert spo.baseline("q1") == pytest.approx(a / (a + b))
    roll = {"rewards": torch.tensor([0.0]), "keys": ["q1"], "mask": torch.ones(1, 2)}
    spo.advantages(roll)
    assert spo.table["q1"][:2] == pytest.approx([0.5 * a + 0.0, 0.5 * b + 1.0])
    assert spo.rho("q1") == pytest.approx(0.96)  # just visited: no drift since
    state = spo.state_dict()
    other = SPO()
    other.load_state_dict(state)
    assert other.table == spo.table and other.drift == spo.drift


def test_ppo_advantages_put_the_reward_on_the_last_token_and_the_kl_in_the_reward():
    ppo = PPO(hidden_size=4, beta=0.5, gamma=1.0, lam=1.0)
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    old, ref = torch.tensor([[0.0, -1.0, -2.0, 0.0]]), torch.tensor([[0.0, -1.5, -1.0, 0.0]])
    roll = {"mask": mask, "old_logp": old, "ref_logp": ref, "rewards": torch.tensor([2.0]),
            "old_values": torch.zeros(1, 4)}
    ppo.advantages(roll)
    r1, r2 = -0.5 * (-1.0 + 1.5), -0.5 * (-2.0 + 1.0) + 2.0  # -beta k1, + R on the last
    assert roll["returns"][0].tolist() == pytest.approx([0, r1 + r2, r2, 0])
    adv = roll["adv"][0]
    assert adv[0] == 0 and adv[3] == 0 and float(adv[1:3].mean()) == pytest.approx(0, abs=1e-6)


def test_cispo_objective_gradient_flows_where_ppo_would_clip():
    logp = torch.log(torch.full((1, 2), 2.0)).requires_grad_(True)  # ratio 2 vs old 0
    b = _batch(torch.zeros(1, 2), torch.ones(1, 2))
    f, _ = CISPO(eps_high=0.2).policy_term(logp, b)
    f.sum().backward()
    assert logp.grad[0].tolist() == pytest.approx([1.2, 1.2])
    logp.grad = None
    GRPO().policy_term(logp, b)[0].sum().backward()
    assert logp.grad.tolist() == [[0.0, 0.0]]


def test_drift_kl_is_zero_for_an_unchanged_policy():
    lp = torch.tensor([[-1.0, -2.0]])
    assert sequence_drift_kl(lp, lp, torch.ones(1, 2)) == 0.0
    assert sequence_drift_kl(lp, lp - 0.5, torch.ones(1, 2)) > 0.0
