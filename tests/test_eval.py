"""Held-out task evaluation: answer matching, the calculator tool, the agent loop."""

import json

import pytest
import torch

from minimind.config import ModelConfig
from minimind.eval.tasks import evaluate_tasks, is_correct, load_heldout
from minimind.errors import UserError
from minimind.infer.tools import calculator, run_tool_call
from minimind.model import MiniMindForCausalLM


@pytest.mark.parametrize("reply,answer,ok", [
    ("27 + 58 = 85.", "85", True), ("It is 185.", "85", False), ("85.5", "85", False), ("共85个", "85", True),
    ("The capital of France is Paris.", "Paris", True), ("The answer is paris", "Paris", True),
    ("The element", "He", False), ("Its symbol is He.", "He", True), ("goldfish", "fish", False),
    ("法国的首都是巴黎。", "巴黎", True), ("法国的首都是柏林。", "巴黎", False),
])
def test_is_correct(reply, answer, ok):
    assert is_correct(reply, answer) is ok


def test_calculator_is_safe_and_right():
    assert calculator("37*59") == "2183" and calculator("(2+3)*4/2") == "10" and calculator("7/2") == "3.5"
    assert calculator("12×3") == "36"
    for bad in ["__import__('os').system('true')", "2**100000", "open('x')", "a+1"]:
        assert run_tool_call({"name": "calculator", "arguments": {"expression": bad}}).startswith("error")
    assert run_tool_call({"name": "search", "arguments": {}}).startswith("error: unknown tool")


def test_load_heldout_errors(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text('{"family": "add", "conversations": [], "answer": "1"}\n{oops\n')
    with pytest.raises(UserError, match=r"h.jsonl:2: not valid JSON"):
        load_heldout(p)
    with pytest.raises(UserError, match="not found"):
        load_heldout(tmp_path / "none.jsonl")


def test_agent_loop_runs_tool_calls(tok, corpus, monkeypatch):
    """A model that always calls the calculator: the loop executes it and asks again, twice."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=2048)
    model = MiniMindForCausalLM(cfg).eval()
    call = '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>'
    seen_prompts = []

    from minimind.infer.engine import Engine, Result

    def fake_generate(self, prompts, params, on_result=None):
        seen_prompts.extend(tok.decode(p) for p in prompts)
        return [Result(tok.encode(call) + [tok.im_end_id], [], "stop", call) for _ in prompts]

    monkeypatch.setattr(Engine, "generate", fake_generate)
    recs = [json.loads(line) for line in open(corpus / "eval" / "heldout.jsonl")]
    tool_recs = [r for r in recs if r["family"] == "tool" and r.get("tool") == "calculator"][:2]
    assert len(tool_recs) == 2
    res = evaluate_tasks(model, tok, tool_recs, max_tool_rounds=2)
    assert len(seen_prompts) == 2 * 3  # first answer + two rounds after tool results
    assert "<tool_response>\n42\n</tool_response>" in seen_prompts[-1]
    assert res["families"]["tool"]["total"] == 2
