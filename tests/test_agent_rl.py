"""Agentic RL: the environment's trajectory reward, and tool-using trajectories through the RL rollout."""

import copy
import json

import pytest
import torch

from minimind import tools
from minimind.agent import run_agents, start
from minimind.checkpoint import load_checkpoint
from minimind.reward.tools import ToolReward, ToolRewardWeights, trajectory_parts
from minimind.runtime import freeze
from minimind.train.rl.objectives import GRPO
from minimind.train.rl.rollout import RolloutConfig, RolloutSource, load_rl_records


QUESTION = "What is 37 times 59?"


def prompt(names=("calculator", "weather")):
    return [{"role": "system", "content": "You can call tools.", "tools": json.dumps(tools.schemas(list(names)))},
            {"role": "user", "content": QUESTION}]


def call_text(*calls):
    return "\n".join("<tool_call>\n" + json.dumps(c, ensure_ascii=False) + "\n</tool_call>" for c in calls)


CALL = {"name": "calculator", "arguments": {"expression": "37*59"}}


def scripted(tok, turns_per_row):
    """A sampler whose row i writes turns_per_row[i % len] round after round, then <|im_end|>."""
    state = {"round": -1}

    def generate(prompts, temperature, max_new_tokens, seeds, suppress_ids):
        state["round"] += 1
        outs = []
        for seed in seeds:
            turns = turns_per_row[(seed - 7919 * state["round"]) % len(turns_per_row)]
            text = turns[min(state["round"], len(turns) - 1)]
            outs.append((tok.encode(text) + [tok.im_end_id], "stop"))
        return outs

    return generate


def episode(tok, turns, names=("calculator", "weather"), max_rounds=2):
    traj = start(tok, prompt(names))
    [traj] = run_agents(scripted(tok, [turns]), tok, [traj], max_rounds=max_rounds)
    return traj


RECORD = {"gt": "2183"}


def test_a_stated_answer_after_a_valid_call_earns_the_full_reward(tok):
    traj = episode(tok, [call_text(CALL), "37 × 59 = 2183."])
    assert traj.messages[3] == {"role": "tool", "content": "2183"}
    p = trajectory_parts(RECORD, traj)
    assert p == {"answer": 1.0, "valid": 1.0, "needed": 1.0, "unfinished": 0.0, "wasted": 0.0, "calls": 1.0}
    assert ToolReward().total(p) == pytest.approx(1.0)


@pytest.mark.parametrize("reply", ["2180, 2181, 2182, 2183", "2183 or 2184 or 2185", "2183 2184",
                                   "The tool says 2183 but maybe 2173."])
def test_listing_every_number_earns_nothing_for_the_answer(tok, reply):
    traj = episode(tok, [call_text(CALL), reply])
    assert trajectory_parts(RECORD, traj)["answer"] == 0.0
    assert ToolReward().total(trajectory_parts(RECORD, traj)) == pytest.approx(0.1)  # only the valid call


def test_a_text_answer_must_be_short_not_a_list_of_every_capital(tok):
    long_list = ", ".join(["Paris", "Berlin", "Rome", "Madrid", "Lisbon", "London", "Dublin"] * 6)
    rec = {"gt": "Paris"}
    ok = episode(tok, ["The capital of France is Paris."])
    spray = episode(tok, [long_list])
    assert trajectory_parts(rec, ok)["answer"] == 1.0 and trajectory_parts(rec, spray)["answer"] == 0.0


def test_invalid_repeated_and_failing_calls_are_wasted_and_unfinished_is_penalised(tok):
    bad_args = {"name": "calculator", "arguments": {"expr": "37*59"}}  # not the schema's argument name
    not_offered = {"name": "lookup", "arguments": {"subject": "France", "relation": "capital"}}
    traj = episode(tok, [call_text(bad_args, not_offered, CALL, CALL), "37 × 59 = 2183."])
    p = trajectory_parts(RECORD, traj)
    assert p["calls"] == 4 and p["valid"] == 0.5 and p["answer"] == 1.0
    # two invalid calls, both answered with an error (counted again), one repeat
    assert p["wasted"] == 2 + 2 + 1
    assert traj.messages[3]["content"].startswith("error: calculator: unexpected argument")
    assert traj.messages[4]["content"].startswith("error: unknown tool 'lookup'")  # not offered: refused
    assert ToolReward().total(p) == pytest.approx(0.9 + 0.05 - 0.05 * 4)
    endless = episode(tok, [call_text(CALL)] * 5, max_rounds=2)
    q = trajectory_parts(RECORD, endless)
    assert endless.finish == "rounds" and q["unfinished"] == 1.0 and q["answer"] == 0.0
    assert ToolReward().total(q) < ToolReward().total(trajectory_parts(RECORD, episode(tok, ["I do not know."])))


def test_needed_call_weight_rewards_calling_the_tool_the_task_needs(tok):
    """--needed-call-weight: with the record's "tool", a right answer from memory earns less than
    the same answer after calling that tool; with weight 0 (default) both earn the same."""
    rec = {"gt": "2183", "tool": "calculator"}
    looked_up = trajectory_parts(rec, episode(tok, [call_text(CALL), "37 × 59 = 2183."]))
    memory = trajectory_parts(rec, episode(tok, ["37 × 59 = 2183."]))
    other = trajectory_parts(rec, episode(tok, [call_text({"name": "weather", "arguments": {"city": "Paris"}}),
                                                "37 × 59 = 2183."]))
    assert (looked_up["needed"], memory["needed"], other["needed"]) == (1.0, 0.0, 0.0)
    assert trajectory_parts(RECORD, episode(tok, ["37 × 59 = 2183."]))["needed"] == 1.0  # no "tool": no demand
    plain, weighted = ToolReward(), ToolReward(ToolRewardWeights(needed=0.3))
    assert plain.total(looked_up) == pytest.approx(plain.total(memory)) == pytest.approx(1.0)
    assert weighted.total(looked_up) == pytest.approx(1.3) and weighted.total(memory) == pytest.approx(1.0)
    assert weighted.total(other) == pytest.approx(1.0)


def test_tool_reward_needs_trajectories():
    with pytest.raises(ValueError, match="--agent"):
        ToolReward().score([RECORD], [{"content": "2183"}])


# ----------------------------------------------------------------------------- through the RL rollout

@pytest.fixture(scope="module")
def agent_prompts(tmp_path_factory):
    path = tmp_path_factory.mktemp("agent") / "agent_rl.jsonl"
    recs = [{"conversations": prompt(), "gt": "2183"},
            {"conversations": prompt(("calculator",)), "gt": "2183", "tool": "calculator"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.fixture(scope="module")
def policy_ckpt(tok, tmp_path_factory):
    from tests.test_rl import tiny_policy

    return tiny_policy(tok, tmp_path_factory.mktemp("agent_policy") / "ckpt", max_position_embeddings=4096)


def agent_source(tok, ckpt, data, generate, group=4):
    policy, tok2 = load_checkpoint(ckpt)
    ref = freeze(copy.deepcopy(policy))
    cfg = RolloutConfig(prompts_per_rollout=2, group_size=group, max_new_tokens=48, agent=True, max_tool_rounds=2)
    return RolloutSource(load_rl_records(data), tok2, policy, ref, GRPO(), ToolReward(), generate, cfg, seed=1)


def test_rollout_trains_only_the_sampled_tokens_of_each_trajectory(tok, policy_ckpt, agent_prompts):
    good = [call_text(CALL), "37 × 59 = 2183."]
    spray = [call_text(CALL), "2181, 2182, 2183"]
    src = agent_source(tok, policy_ckpt, agent_prompts, scripted(tok, [good, spray]))
    assert [r["tool"] for r in load_rl_records(agent_prompts)] == [None, "calculator"]  # kept for the reward
    kept, stats = src.collect()
    roll = src.tensors(kept)
    assert len(kept["rewards"]) == 8 and sorted(set(kept["rewards"])) == pytest.approx([0.1, 1.0])
    assert stats["reward/answer"] == pytest.approx(0.5)
    result = tok.encode("2183")
    for i, (p, r, m) in enumerate(zip(kept["prompts"], kept["responses"], kept["masks"])):
        traj = kept["replies"][i]["trajectory"]
        assert p + r == traj.ids and m == traj.action_mask[len(p):]  # the whole episode, its own mask
        trained = roll["mask"][i, len(p) - 1:len(p) - 1 + len(r)].tolist()
        assert trained == m and 0 < sum(m) < len(r)
        # every trained token is one the sampler wrote: the call, the answer and their <|im_end|>
        turns = good if i % 2 == 0 else spray
        assert [t for t, k in zip(r, m) if k] == [t for x in turns for t in tok.encode(x) + [tok.im_end_id]]
        # the tool's result sits in the context, untrained
        assert "2183" in tok.decode([t for t, k in zip(r, m) if not k])


def test_agent_flag_trains_through_the_engine(tok, policy_ckpt, agent_prompts, corpus, tmp_path):
    """`minimind grpo --agent` end to end with the real sampler: runs, logs the environment's reward parts."""
    from minimind.cli import build_parser

    args = build_parser().parse_args([
        "grpo", "--agent", "--init", str(policy_ckpt), "--data", str(corpus / "agent_rl.jsonl"),
        "--out", str(tmp_path / "run"), "--rollouts", "2", "--prompts-per-rollout", "2", "--group-size", "2",
        "--max-new-tokens", "12", "--max-tool-rounds", "1", "--lr", "1e-3", "--device", "cpu", "--dtype", "fp32",
        "--no-progress", "--no-dynamic-sampling"])
    args.func(args)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward/tools/answer" in r]
    assert len(train) >= 2 and all(-0.4 <= r["reward"] <= 1.0 for r in train)
    assert all(0.0 <= r["reward/tools/valid"] <= 1.0 for r in train)
    assert torch.isfinite(torch.tensor([r["loss"] for r in train])).all()
