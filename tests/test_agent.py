"""The agent loop builds trajectories token-exactly, with the right masks."""

import json

import pytest
import torch

from minimind.agent import call_is_valid, run_agents, start
from minimind.infer.tools import run_tool_call
from minimind.tokenizer import render_chat

CALC = [{"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}},
                   "required": ["expression"]}}}]


def scripted(tok, turns):
    """A 'model' that writes the given assistant texts, canonically tokenized, then <|im_end|>."""
    calls = []

    def generate(prompts, temperature, max_new_tokens, seeds, suppress_ids):
        calls.append(len(prompts))
        text = turns[len(calls) - 1]
        return [(tok.encode(text) + [tok.im_end_id], "stop") for _ in prompts]

    return generate


@pytest.mark.parametrize("think", [False, True])
def test_trajectory_equals_the_template_rendering_and_sft_masks(tok, think):
    call = {"name": "calculator", "arguments": {"expression": "1234 * 5678"}}
    prefix = "I need the calculator.\n</think>\n\n" if think else ""
    turns = [prefix + "<tool_call>\n" + json.dumps(call, ensure_ascii=False) + "\n</tool_call>",
             ("The product is known now.\n</think>\n\n" if think else "") + "1234 * 5678 = 7006652."]
    messages = [{"role": "system", "content": "You can use tools."}, {"role": "user", "content": "1234*5678?"}]
    traj = start(tok, messages, CALC, think=think)
    prompt_len = len(traj.ids)
    [traj] = run_agents(scripted(tok, turns), tok, [traj], run_tool_call, max_rounds=2, think=think)
    assert traj.finish == "stop" and traj.rounds == 1 and traj.calls == 1 and traj.bad_calls == 0
    assert traj.messages[2]["tool_calls"] == [call] and traj.messages[3] == {"role": "tool", "content": "7006652"}
    ids, mask = render_chat(tok, traj.messages, tools=CALC)
    assert traj.ids == ids  # token for token
    assert traj.sft_mask == mask
    # RL trains on exactly the sampled tokens: both turns with their <|im_end|>, nothing else
    sampled = [i for i, m in enumerate(traj.action_mask) if m]
    want = sum(len(tok.encode(t)) + 1 for t in turns)
    assert len(sampled) == want and traj.ids[sampled[-1]] == tok.im_end_id
    assert not any(traj.action_mask[:prompt_len])
    tool_text = tok.decode([t for t, m in zip(traj.ids, traj.action_mask) if m])
    assert "7006652" not in tool_text.split("=")[0]  # the tool's result itself is never an action


def test_parallel_calls_and_the_round_limit(tok):
    calls = [{"name": "calculator", "arguments": {"expression": e}} for e in ("2 + 2", "3 * 3")]
    text = "\n".join("<tool_call>\n" + json.dumps(c) + "\n</tool_call>" for c in calls)
    traj = start(tok, [{"role": "user", "content": "go"}], CALC)
    [traj] = run_agents(scripted(tok, [text, text, text]), tok, [traj], run_tool_call, max_rounds=1)
    assert traj.finish == "rounds" and traj.rounds == 1 and traj.calls == 2
    assert [m["content"] for m in traj.messages if m["role"] == "tool"] == ["4", "9"]
    ids, mask = render_chat(tok, traj.messages, tools=CALC)
    assert traj.ids == ids and traj.sft_mask == mask


def test_a_real_model_batch_keeps_ids_and_masks_aligned(tok):
    from minimind.config import ModelConfig
    from minimind.model import MiniMindForCausalLM
    from minimind.train.rl.train import engine_sampler

    torch.manual_seed(0)
    model = MiniMindForCausalLM(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)).eval()
    trajs = [start(tok, [{"role": "user", "content": q}], CALC) for q in ("1+1?", "hello", "2*3?")]
    out = run_agents(engine_sampler(model, tok), tok, trajs, run_tool_call, max_rounds=2, temperature=1.0,
                     max_new_tokens=20, seeds=[1, 2, 3])
    for t in out:
        assert t.done and len(t.ids) == len(t.action_mask) == len(t.sft_mask)
        assert sum(t.action_mask) <= sum(t.sft_mask)


def test_call_validity_against_the_offered_schemas():
    assert call_is_valid({"name": "calculator", "arguments": {"expression": "1+1"}}, CALC)
    assert not call_is_valid({"name": "calculator", "arguments": {}}, CALC)  # required missing
    assert not call_is_valid({"name": "calculator", "arguments": {"expression": 5}}, CALC)  # wrong type
    assert not call_is_valid({"name": "calculator", "arguments": {"expression": "1", "x": 1}}, CALC)
    assert not call_is_valid({"name": "weather", "arguments": {}}, CALC)
