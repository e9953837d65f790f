"""`minimind eval tools`: the metrics, a local checkpoint, and the OpenAI round trip against our own server.

The round trip is the end-to-end test of tool calling over the API: a tiny model is fine-tuned (the
real `minimind sft` command) until it has learnt two tool conversations by heart; our server serves
it; the `openai` client offers the tools, receives `tool_calls`, runs them with the tool set, sends
the results back as `tool` messages and gets a final answer stating the result.
"""

import json

import pytest
import torch

from minimind import tools
from minimind.agent import run_agents, start
from minimind.checkpoint import save_checkpoint
from minimind.cli import build_parser
from minimind.config import ModelConfig
from minimind.data.synth_tools import TOOL_NAMES
from minimind.errors import UserError
from minimind.eval.tools import call_matches, evaluate_tools, load_tool_tasks, run_endpoint, run_local

# a short schema keeps the memorised conversations short; the calls still run the built-in calculator
CALC = [{"type": "function", "function": {
    "name": "calculator", "description": "Arithmetic.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}]
TASKS = [("What is 37 times 59?", "37*59", "2183"), ("What is 12 times 34?", "12*34", "408")]


def record(question, expr, answer, tool="calculator"):
    return {"family": "tool", "tool": tool, "lang": "en", "answer": answer,
            "call": {"name": "calculator", "arguments": {"expression": expr}},
            "conversations": [{"role": "system", "content": "Use tools.", "tools": json.dumps(CALC)},
                              {"role": "user", "content": question}]}


def call_text(call):
    return "<tool_call>\n" + json.dumps(call) + "\n</tool_call>"


def scripted(tok, rows):
    """Row i of every batch writes rows[i][round] (then <|im_end|>)."""
    rounds = {"n": -1}

    def generate(prompts, temperature, max_new_tokens, seeds, suppress_ids):
        rounds["n"] += 1
        live = [i for i, row in enumerate(rows) if len(row) > rounds["n"]]
        return [(tok.encode(rows[i][rounds["n"]]) + [tok.im_end_id], "stop") for i in live[:len(prompts)]]

    return generate


def test_call_matching_compares_numbers_as_numbers():
    want = {"name": "unit_converter", "arguments": {"value": 10, "from_unit": "km", "to_unit": "miles"}}
    assert call_matches({"name": "unit_converter", "arguments": {"value": 10.0, "from_unit": " km",
                                                                 "to_unit": "miles"}}, want)
    assert not call_matches({"name": "unit_converter", "arguments": {"value": 11, "from_unit": "km",
                                                                     "to_unit": "miles"}}, want)
    assert not call_matches({"name": "unit_converter", "arguments": {"value": 10, "from_unit": "km"}}, want)
    assert not call_matches({"name": "calculator", "arguments": want["arguments"]}, want)
    assert not call_matches({"name": "unit_converter", "arguments": "not json"}, want)


def test_metrics_per_tool_and_overall(tok):
    recs = [record(*TASKS[0]), record(*TASKS[0]), record(*TASKS[1]), record(*TASKS[1], tool="other")]
    good = {"name": "calculator", "arguments": {"expression": "37*59"}}
    rows = [[call_text(good), "37 × 59 = 2183."],                        # right call, stated answer
            [call_text(good), "2183, 2184 or 2185"],                     # right call, sprayed answer
            [call_text({"name": "calculator", "arguments": {"expr": "12*34"}}),
             call_text({"name": "calculator", "arguments": {"expression": "12*34"}}), "It is 408."],
            ["Probably 408."]]                                          # no call, answers anyway
    trajs = run_agents(scripted(tok, rows), tok, [start(tok, r["conversations"]) for r in recs], max_rounds=2)
    res = evaluate_tools(recs, trajs)
    calc, other, overall = res["tools"]["calculator"], res["tools"]["other"], res["overall"]
    assert calc["tasks"] == 3 and calc["call_rate"] == 1.0
    assert calc["valid"] == pytest.approx(3 / 4)  # the call with the wrong argument name
    assert calc["exact"] == pytest.approx(2 / 3) and calc["accuracy"] == pytest.approx(2 / 3)
    assert calc["contains"] == 1.0  # the sprayed answer contains 2183: lenient match only
    assert calc["rounds"] == pytest.approx(4 / 3) and calc["finished"] == 1.0
    assert other["call_rate"] == 0.0 and other["accuracy"] == 1.0 and other["valid"] == 0.0
    assert overall["tasks"] == 4 and overall["accuracy"] == pytest.approx(3 / 4)
    assert res["samples"][2]["calls"][0]["arguments"] == {"expr": "12*34"}


def test_local_run_on_the_held_out_file(tok, corpus):
    torch.manual_seed(0)
    from minimind.model import MiniMindForCausalLM

    model = MiniMindForCausalLM(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)).eval()
    recs = load_tool_tasks(corpus / "eval" / "tools_heldout.jsonl", limit=2)
    assert {r["tool"] for r in recs} == set(TOOL_NAMES) and len(recs) == 12
    res = evaluate_tools(recs, run_local(model, tok, recs, max_new_tokens=8, batch_size=5))
    assert res["overall"]["tasks"] == 12 and set(res["tools"]) == set(TOOL_NAMES)
    assert res["overall"]["accuracy"] == 0.0  # a random model answers nothing right


def test_bad_input_is_a_user_error(tmp_path, corpus):
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"family": "tool", "conversations": [], "answer": "1"}) + "\n")
    with pytest.raises(UserError, match="record 1 has no 'tool' and 'call'"):
        load_tool_tasks(bare)
    bare.write_text(json.dumps({"family": "fact", "conversations": [], "answer": "1"}) + "\n")
    with pytest.raises(UserError, match="no tool tasks"):
        load_tool_tasks(bare)
    assert {r["tool"] for r in load_tool_tasks(corpus / "eval" / "heldout.jsonl")} == set(TOOL_NAMES)
    with pytest.raises(UserError, match="--tools: no tasks for nosuch"):
        load_tool_tasks(corpus / "eval" / "tools_heldout.jsonl", only=["nosuch"])
    data = str(corpus / "eval" / "tools_heldout.jsonl")
    for argv, msg in ((["--endpoint", "http://127.0.0.1:9"], "needs --model"),
                      (["--endpoint", "http://127.0.0.1:9", "--model", "m"], "cannot connect"),
                      ([], "give a checkpoint")):
        args = build_parser().parse_args(["eval", "tools", "--data", data, "--no-progress", *argv])
        with pytest.raises(UserError, match=msg):
            args.func(args)


# ----------------------------------------------------------------------------- the server round trip

@pytest.fixture(scope="module")
def memorised(tok, tmp_path_factory):
    """A tiny model fine-tuned with `minimind sft` on the two tool conversations of TASKS."""
    from minimind.model import MiniMindForCausalLM

    root = tmp_path_factory.mktemp("tool_roundtrip")
    torch.manual_seed(0)
    model = MiniMindForCausalLM(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))
    init = save_checkpoint(root / "init", model, tok)
    convs = []
    for q, expr, result in TASKS:
        call = {"name": "calculator", "arguments": {"expression": expr}}
        convs.append({"conversations": record(q, expr, result)["conversations"] + [
            {"role": "assistant", "content": "", "tool_calls": json.dumps([call])},
            {"role": "tool", "content": tools.execute(call)},
            {"role": "assistant", "content": f"{expr.replace('*', ' × ')} = {result}."}]})
    data = root / "sft.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in convs))
    args = build_parser().parse_args([
        "sft", "--data", str(data), "--init", str(init), "--out", str(root / "sft"), "--steps", "100",
        "--batch-size", "2", "--max-seq-len", "512", "--lr", "1e-2", "--warmup", "5", "--device", "cpu",
        "--dtype", "fp32", "--no-progress", "--log-every", "50"])
    args.func(args)
    return root / "sft"


def test_openai_client_round_trip_through_our_server(memorised, tmp_path):
    openai = pytest.importorskip("openai")
    pytest.importorskip("fastapi")
    from .test_server import start_server

    server, thread, url = start_server(memorised, "--model-name", "tiny")
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=60)
        # by hand, the way any client does it: offer tools, receive tool_calls, run them, send the results
        messages = [{"role": "user", "content": TASKS[0][0]}]
        first = client.chat.completions.create(model="tiny", messages=[
            {"role": "system", "content": "Use tools."}, *messages], tools=CALC, temperature=0, max_tokens=48)
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls"
        [tc] = choice.message.tool_calls
        assert tc.function.name == "calculator" and json.loads(tc.function.arguments) == {"expression": "37*59"}
        # the whole benchmark over the API: both tasks, tools run here
        recs = [record(*t) for t in TASKS]
        trajs = run_endpoint(client, "tiny", recs, max_rounds=2, max_new_tokens=48)
        for t, (_, _, result) in zip(trajs, TASKS):
            assert [m["role"] for m in t.messages[2:]] == ["assistant", "tool", "assistant"]
            assert t.messages[3]["content"] == result and t.finish == "stop" and t.rounds == 1
            assert result in t.reply["content"]
        res = evaluate_tools(recs, trajs)
        assert res["overall"]["accuracy"] == 1.0 and res["overall"]["exact"] == 1.0
        # and the command line
        data = tmp_path / "tasks.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in recs))
        out = tmp_path / "res.json"
        args = build_parser().parse_args(["eval", "tools", "--data", str(data), "--endpoint", url, "--model", "tiny",
                                          "--json", str(out), "--no-progress"])
        args.func(args)
        assert json.loads(out.read_text())["overall"]["accuracy"] == 1.0
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_chat_with_tools_runs_the_call_and_answers_with_its_result(memorised):
    """`minimind chat --tools`: one user turn through the agent loop - the model's call is shown,
    run (the built-in calculator), its result shown and handed back, and the answer states it."""
    import io

    from minimind.infer.chat import tool_turn
    from minimind.infer.generate import load_engine
    from minimind.infer.sampling import SamplingParams

    engine = load_engine(memorised, "cpu", "fp32", compile="off", max_batch=1)
    out = io.StringIO()
    messages = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": TASKS[0][0]}]
    added = tool_turn(engine, messages, SamplingParams(temperature=0, max_new_tokens=48), False, CALC,
                      max_rounds=2, out=out, color=False)
    assert [m["role"] for m in added] == ["assistant", "tool", "assistant"]
    assert added[0]["tool_calls"][0]["arguments"] == {"expression": "37*59"}
    assert added[1]["content"] == "2183" and "2183" in added[2]["content"]
    shown = out.getvalue()
    assert '[tool call] calculator({"expression": "37*59"})' in shown and "[tool result] 2183" in shown
    # no rounds left: the call is shown but not run
    added = tool_turn(engine, messages, SamplingParams(temperature=0, max_new_tokens=48), False, CALC,
                      max_rounds=0, out=out, color=False)
    assert [m["role"] for m in added] == ["assistant"] and "stopped after 0 tool rounds" in out.getvalue()


def test_chat_tools_flag_names_unknown_tools(capsys):
    from minimind.cli import main

    assert main(["chat", "no-such-checkpoint", "--tools", "calculator,teleport"]) == 2
    err = capsys.readouterr().err
    assert "teleport" in err and "lookup" in err and "Traceback" not in err
