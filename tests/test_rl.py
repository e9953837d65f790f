"""RL on the one engine: rollouts, ratios, clipping, the frozen reference, dynamic sampling, resume."""

import copy
import json

import pytest
import torch

from minimind.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from minimind.config import ModelConfig
from minimind.model import MiniMindForCausalLM
from minimind.runtime import freeze
from minimind.train.engine import TrainConfig
from minimind.train.rl.objectives import CISPO, GRPO, PPO, SPO
from minimind.train.rl.rollout import RolloutConfig, RolloutSource, load_rl_records
from minimind.train.rl.train import RLConfig, engine_sampler, train_rl


class LengthReward:
    """Deterministic, varies within a group: shorter replies score higher (0..1)."""

    name = "length"

    def needs_gt(self):
        return False

    def score(self, records, replies):
        vals = [1.0 / (1.0 + len(y["content"])) for y in replies]
        return vals, {"len": [float(len(y["content"])) for y in replies]}


class HalfConstantReward(LengthReward):
    """Prompts with an even line number always score 0: their groups carry no signal."""

    def score(self, records, replies):
        vals, parts = super().score(records, replies)
        return [0.0 if int(r["key"]) % 2 == 0 else v for r, v in zip(records, vals)], parts


def tiny_policy(tok, path, max_position_embeddings: int = 512):
    """A seeded 2-layer model saved as a checkpoint: the policy of the RL tests."""
    torch.manual_seed(0)
    model = MiniMindForCausalLM(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=max_position_embeddings, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    return save_checkpoint(path, model, tok)


@pytest.fixture(scope="module")
def sft(tok, tmp_path_factory):
    return tiny_policy(tok, tmp_path_factory.mktemp("rl") / "sft")


@pytest.fixture(scope="module")
def prompts(corpus, tmp_path_factory):
    path = tmp_path_factory.mktemp("rlp") / "rl.jsonl"
    lines = (corpus / "rlaif.jsonl").read_text(encoding="utf-8").splitlines()[:40]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def source(sft, prompts, objective, reward, **kw):
    policy, tok = load_checkpoint(sft)
    policy.train()
    ref = freeze(copy.deepcopy(policy))
    cfg = RolloutConfig(**{"prompts_per_rollout": 4, "group_size": 4, "max_new_tokens": 12, **kw})
    return RolloutSource(load_rl_records(prompts), tok, policy, ref, objective, reward,
                         engine_sampler(policy, tok), cfg, seed=1), policy, ref


def test_first_ratio_is_one_and_clipping_acts_after_an_update(sft, prompts):
    src, policy, ref = source(sft, prompts, GRPO(beta=0.05), LengthReward(), minibatches=2)
    opt = torch.optim.SGD(policy.parameters(), lr=3.0)
    obj = src.objective
    first = next(src)
    loss, m = obj.loss(policy, first)
    assert m["ratio"].item() == pytest.approx(1.0, abs=1e-6) and m["clip_frac"].item() == 0.0
    assert m["reward_std"] > 0 and 0 < m["n_tokens"].item()
    loss.backward()
    opt.step()
    opt.zero_grad()
    assert all(p.grad is None for p in ref.parameters())  # the reference never gets gradients
    second = next(src)  # the same rollout's second minibatch: pi_theta != pi_old now
    _, m2 = obj.loss(policy, second)
    assert abs(m2["ratio"].item() - 1.0) > 1e-3
    assert m2["clip_frac"].item() > 0.0


def test_one_step_per_rollout_takes_old_logp_from_the_training_forward(sft, prompts):
    """One optimizer step per rollout: pi_old is the policy being trained, so the rollout skips scoring
    it and the loss reads log pi_old from its own forward, detached (ratio exactly 1). Loss and
    gradients equal those with the scored log pi_old; PPO and SPO, which read it before training, still score it."""
    grads, losses = [], []
    for scored in (False, True):
        src, policy, _ = source(sft, prompts, GRPO(beta=0.05), LengthReward())
        src.objective.needs_old_logp_first = scored
        batch = next(src)
        assert ("old_logp" in batch) == scored
        loss, m = src.objective.loss(policy, batch)
        loss.backward()
        if not scored:
            assert m["ratio"].item() == 1.0 and m["clip_frac"].item() == 0.0
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
    assert PPO.needs_old_logp_first and SPO.needs_old_logp_first and not CISPO.needs_old_logp_first


def agentic_or_plain_rollout(sft, prompts, corpus, agent, objective=None):
    """A rollout's tensors, its source, policy and reference: plain replies or tool-using trajectories."""
    from minimind.reward.tools import ToolReward

    if agent:
        src, policy, ref = source(sft, corpus / "agent_rl.jsonl", objective or GRPO(), ToolReward(), agent=True,
                                  max_new_tokens=24)
    else:
        src, policy, ref = source(sft, prompts, objective or GRPO(), LengthReward())
    roll = src.tensors(src.collect()[0])
    assert len({tuple(r) for r in roll["input_ids"][:, :10].tolist()}) < roll["input_ids"].shape[0]  # shared
    return roll, src, policy, ref


@pytest.mark.parametrize("agent", [False, True])
def test_reference_logprobs_run_each_prompt_once_and_equal_a_full_forward(sft, prompts, corpus, agent):
    """log pi_ref with each group's prompt run once (its keys and values attended by the G rows) equals a
    plain forward over every whole row, on plain replies and on tool-using trajectories."""
    from minimind.train.rl.forward import policy_forward, prompt_groups
    from minimind.train.rl.losses import token_logps

    roll, _, _, ref = agentic_or_plain_rollout(sft, prompts, corpus, agent)
    ids, mask = roll["input_ids"], roll["mask"]
    assert len(prompt_groups(ids, mask)) == 4  # 4 prompts x 4 samples
    with torch.no_grad():
        full = token_logps(ref(ids[:, :-1]).logits, ids[:, 1:]) * mask
        got = policy_forward(ref, ids, mask, 1.0).logp * mask
    assert (got != 0).sum() == mask.sum() > 0
    assert torch.allclose(got, full, atol=1e-5)


@pytest.mark.parametrize("agent", [False, True])
@pytest.mark.parametrize("algo", ["grpo", "cispo"])
def test_training_forward_runs_each_prompt_once_with_the_full_forwards_loss_and_gradients(
        sft, prompts, corpus, agent, algo):
    """The loss of a micro-batch whose rows share prompts, with each prompt run once, equals the loss of
    the plain forward over whole rows, and so do its gradients and metrics (the policy moved off pi_old, so the
    ratios are not 1 and the clipping acts)."""
    objective = {"grpo": GRPO(beta=0.05, eps_low=0.01, eps_high=0.01), "cispo": CISPO(beta=0.05, eps_high=0.01)}[algo]
    roll, src, policy, _ = agentic_or_plain_rollout(sft, prompts, corpus, agent, objective)
    src.cfg.minibatches = 2  # two optimizer steps a rollout: log pi_old is scored, then the policy moves
    src.buffer = src.make_rollout()
    torch.manual_seed(0)
    with torch.no_grad():  # the policy moves away from pi_old, as after the rollout's first step
        for p in policy.parameters():
            p.add_(0.02 * torch.randn_like(p))
    from minimind.train.rl.forward import prompt_groups

    batch = src.buffer[1]
    assert any(len(rows) > 1 for _, rows in prompt_groups(batch["input_ids"], batch["mask"]))  # rows share prompts
    results = []
    for share in (True, False):
        objective.share_prompts = share
        policy.zero_grad()
        loss, m = objective.loss(policy, batch)
        loss.backward()
        results.append((loss.item(), {k: float(v) for k, v in m.items() if torch.is_tensor(v)},
                        torch.cat([p.grad.flatten() for p in policy.parameters()])))
    objective.share_prompts = True
    (l_shared, m_shared, g_shared), (l_full, m_full, g_full) = results
    assert l_shared == pytest.approx(l_full, rel=1e-5, abs=1e-7)
    assert m_shared["clip_frac"] > 0 and m_shared["ratio"] != 1.0
    for k in m_full:
        assert m_shared[k] == pytest.approx(m_full[k], rel=1e-4, abs=1e-6), k
    assert g_full.abs().max() > 0
    assert torch.allclose(g_shared, g_full, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("moe", [False, True])
def test_prompt_sharing_forward_on_hand_made_rows(moe):
    """Rows of two prompts (lengths 5 and 9), replies of different lengths, right padding and a masked
    middle (a tool result): log pi of every target equals the plain forward's, entropies too, for a dense
    and a MoE model; a row alone keeps the plain forward."""
    from minimind.train.rl.forward import policy_forward, prompt_groups
    from minimind.train.rl.losses import token_logps

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, num_experts=4 if moe else 0, num_experts_per_tok=2)
    model = MiniMindForCausalLM(cfg).train()
    T = 20
    ids = torch.randint(1, 97, (5, T))
    ids[1:3, :5] = ids[0, :5]  # rows 0-2: prompt of 5 tokens
    ids[4, :9] = ids[3, :9]  # rows 3-4: prompt of 9
    mask = torch.zeros(5, T - 1)
    for row, (P, end) in enumerate([(5, 12), (5, 20), (5, 7), (9, 15), (9, 20)]):
        mask[row, P - 1:end - 1] = 1.0
        ids[row, end:] = 0  # right padding
    mask[1, 8:11] = 0  # a tool result inside row 1's response
    assert sorted(len(r) for _, r in prompt_groups(ids, mask)) == [2, 3]
    shared = policy_forward(model, ids, mask, 0.8, entropy=True)
    plain = policy_forward(model, ids, mask, 0.8, share=False, entropy=True)
    assert plain.hidden is not None and shared.hidden is None
    assert torch.allclose(shared.logp * mask, plain.logp * mask, atol=1e-5)
    assert torch.allclose(shared.entropy * mask, plain.entropy * mask, atol=1e-5)
    with torch.no_grad():
        direct = token_logps(model(ids[:, :-1]).logits, ids[:, 1:], 0.8)
    assert torch.allclose(plain.logp, direct)
    assert (shared.aux_loss is not None) == moe and (not moe or torch.isfinite(shared.aux_loss))
    alone = policy_forward(model, ids[[0, 3]], mask[[0, 3]], 0.8)  # no two rows share a prompt
    assert alone.hidden is not None


def test_micro_batches_keep_groups_whole_and_sum_to_the_one_batch_step(sft, prompts):
    """With --micro-batches 2 each micro-batch holds whole groups (each prompt runs once in it), and the
    step's gradient (each micro-batch's loss / 2, as the engine accumulates) equals one micro-batch's."""
    from minimind.train.rl.forward import prompt_groups

    grads = []
    for A in (1, 2):
        src, policy, _ = source(sft, prompts, GRPO(beta=0.05), LengthReward(), micro_batches=A)
        batches = src.make_rollout()
        assert len(batches) == A
        for b in batches:
            assert sorted(len(rows) for _, rows in prompt_groups(b["input_ids"], b["mask"])) == [4] * (4 // A)
            loss, _ = src.objective.loss(policy, b)
            (loss / A).backward()
        grads.append(torch.cat([p.grad.flatten() for p in policy.parameters()]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_zero_variance_groups_are_dropped_and_refilled(sft, prompts):
    src, _, _ = source(sft, prompts, GRPO(), HalfConstantReward(), max_refills=3)
    kept, stats = src.collect()
    keys = {int(r["key"]) for r in kept["records"]}
    assert len(kept["records"]) == 4 * 4 and all(k % 2 == 1 for k in keys)
    assert 0.3 < stats["zero_var_frac"] < 0.8
    src2, _, _ = source(sft, prompts, GRPO(), HalfConstantReward(), dynamic_sampling=False)
    kept2, _ = src2.collect()
    assert any(int(r["key"]) % 2 == 0 for r in kept2["records"])


def test_responses_keep_their_stop_token_and_masks_cover_them(sft, prompts):
    src, _, _ = source(sft, prompts, SPO(), LengthReward(), max_new_tokens=40)
    kept, _ = src.collect()
    roll = src.tensors(kept)
    stop = {src.tok.eos_id, src.tok.eot_id}
    for i, (p, r) in enumerate(zip(kept["prompts"], kept["responses"])):
        assert int(roll["mask"][i].sum()) == len(r)
        assert roll["input_ids"][i, len(p):len(p) + len(r)].tolist() == r
        if kept["replies"][i]["finish_reason"] == "stop":
            assert r[-1] in stop


@pytest.mark.parametrize("algo", ["grpo", "ppo", "spo", "cispo"])
def test_every_algorithm_trains_through_the_engine(sft, prompts, corpus, tmp_path, algo, monkeypatch):
    from minimind.train.rl import train as rl_train

    monkeypatch.setattr(rl_train, "build_reward", lambda rc, think, device: LengthReward())
    cfg = RLConfig(algo=algo, init=str(sft), data=str(prompts), rollouts=2,
                   rollout=RolloutConfig(prompts_per_rollout=2, group_size=3, max_new_tokens=10),
                   eval_data=str(corpus / "eval" / "heldout.jsonl") if algo == "grpo" else None, eval_limit=2,
                   eval_prompts=str(prompts) if algo == "grpo" else None)
    tc = TrainConfig(out_dir=str(tmp_path / algo), lr=1e-2, warmup=0, schedule="constant", dtype="fp32",
                     device="cpu", progress=False, log_every=1)
    m = train_rl(cfg, tc)
    assert {"loss", "kl_k3", "reward", "entropy"} <= set(m)
    if algo == "grpo":  # held-out accuracy before and after, through the engine's evaluators
        assert {"acc/add", "acc/add_before", "acc/fact", "acc/fact_before"} <= set(m)
        # the run's own reward on held-out prompts: fixed seeds, so it is a function of the model alone
        evaluate = rl_train.heldout_reward_evaluator(load_checkpoint(sft)[1], load_rl_records(prompts),
                                                     LengthReward(), cfg.rollout)
        assert m["eval_reward_before"] == pytest.approx(evaluate(load_checkpoint(sft)[0])["eval_reward"])
        assert m["eval_reward"] == pytest.approx(evaluate(load_checkpoint(tmp_path / algo)[0])["eval_reward"])
    before = load_checkpoint(sft)[0].state_dict()
    after = load_checkpoint(tmp_path / algo)[0].state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    rows = [json.loads(x) for x in (tmp_path / algo / "metrics.jsonl").read_text().splitlines()]
    if algo == "grpo":  # "before" is step 0 of the log, so `minimind plot` draws it
        assert rows[0]["step"] == 0 and rows[0]["acc/add"] == m["acc/add_before"]
    rows = [r for r in rows if "loss" in r]  # (the final evaluation is a row of its own)
    assert len(rows) == 2 and all("zero_var_frac" in r for r in rows)
    if algo == "ppo":  # the critic trained with the policy and is saved in the resume state
        from minimind.checkpoint import load_train_state

        head = load_train_state(resolve_checkpoint(tmp_path / algo))["objective"]["value_head"]
        assert float(head["weight"].abs().sum()) > 0 and "value_loss" in rows[-1]


def test_resume_of_an_rl_run_is_exact(sft, prompts, tmp_path, monkeypatch):
    from minimind.train.rl import train as rl_train

    monkeypatch.setattr(rl_train, "build_reward", lambda rc, think, device: LengthReward())
    cfg = RLConfig(algo="spo", init=str(sft), data=str(prompts), rollouts=4,
                   rollout=RolloutConfig(prompts_per_rollout=2, max_new_tokens=8, minibatches=2))

    def run(out, **kw):
        tc = TrainConfig(out_dir=str(out), lr=1e-2, warmup=0, schedule="constant", dtype="fp32", device="cpu",
                         progress=False, **kw)
        return train_rl(cfg, tc)

    run(tmp_path / "whole")
    run(tmp_path / "parts", stop_after=3)  # mid-rollout: the buffer and the SPO tracker are saved
    run(tmp_path / "parts", resume=True)
    a = load_checkpoint(tmp_path / "whole")[0].state_dict()
    b = load_checkpoint(tmp_path / "parts")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_rl_file_without_gt_needs_a_reward_model(tmp_path):
    from minimind.errors import UserError

    p = tmp_path / "rlaif-mini.jsonl"
    p.write_text(json.dumps({"conversations": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "None"}]}) + "\n")
    recs = load_rl_records(p)
    assert recs[0]["conversations"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(UserError, match="reward model"):
        load_rl_records(p, need_gt=True)


def test_objectives_are_the_four_of_the_family():
    assert [c.name for c in (GRPO, PPO, SPO, CISPO)] == ["grpo", "ppo", "spo", "cispo"]


def test_cli_runs_grpo_and_reports_bad_flags(sft, prompts, tmp_path, capsys):
    from minimind.cli import main

    out = tmp_path / "grpo"
    rc = main(["grpo", "--init", str(sft), "--data", str(prompts), "--out", str(out), "--rollouts", "1",
               "--prompts-per-rollout", "2", "--group-size", "2", "--max-new-tokens", "6", "--dtype", "fp32",
               "--device", "cpu", "--no-progress", "--max-refills", "0"])
    assert rc == 0 and (resolve_checkpoint(out) / "model.safetensors").is_file()
    assert "done: reward" in capsys.readouterr().out
    assert main(["grpo", "--init", str(sft), "--data", str(prompts), "--out", str(out), "--temperature", "0"]) == 2
    assert "--temperature must be > 0" in capsys.readouterr().err
    assert main(["spo", "--init", str(sft), "--data", str(prompts), "--out", str(out), "--rules", "answer=x"]) == 2


def test_grpo_driven_by_a_likelihood_reward_model_alone(sft, prompts, tmp_path, capsys):
    """--rules none --reward-model: a likelihood reward model (a causal LM + reward.json) is the only
    reward; its raw score beta * mean log p is never positive and the reward is sigmoid(raw - center)."""
    import math
    import shutil

    from minimind.cli import main
    from minimind.reward.model import save_reward_meta

    rm = tmp_path / "rm"
    shutil.copytree(resolve_checkpoint(sft), rm)
    save_reward_meta(rm, center=-4.0, kind="likelihood", beta=2.0)
    out = tmp_path / "grpo"
    rc = main(["grpo", "--init", str(sft), "--data", str(prompts), "--out", str(out), "--rollouts", "1",
               "--prompts-per-rollout", "2", "--group-size", "2", "--max-new-tokens", "6", "--dtype", "fp32",
               "--device", "cpu", "--no-progress", "--max-refills", "0", "--rules", "none",
               "--reward-model", str(rm)])
    assert rc == 0 and "done: reward" in capsys.readouterr().out
    m = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    step = next(x for x in m if "reward/reward_model/rm_score" in x)
    raw = step["reward/reward_model/rm_score"]
    assert raw < 0 and step["reward"] == pytest.approx(step["reward/reward_model"])
    assert 0 < step["reward"] < 1 / (1 + math.exp(-(0.0 + 4.0)))  # every raw score is <= 0
