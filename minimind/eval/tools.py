"""`minimind eval tools`: how well a model uses tools, per tool and overall, on held-out tool tasks.

Each record of eval/tools_heldout.jsonl (`minimind data synth`) is a question that one tool answers:
{"tool", "conversations": [system with a tools list, user], "answer", "call": the expected call}.
The model runs as an agent (agent.py: it calls tools, the tools really run, it reads their results,
up to --max-rounds rounds) and every episode is measured:

    call_rate   tasks where the model called at least one tool (every task needs one)
    valid       calls that parse, name an offered tool and match its JSON schema (of all calls made)
    exact       tasks whose first call is the expected one: same tool, same arguments (numbers compared
                as numbers, strings after trimming spaces)
    accuracy    tasks whose final answer *states* the answer: the agentic-RL reward's answer part
                (reward/rules.py: the last number is the answer and no unasked number appears; a text
                answer in a short reply)
    contains    tasks whose final answer contains the answer anywhere (the lenient match of
                `minimind eval tasks`, so lookup can be compared with the no-tool fact family)
    rounds      tool rounds used, on average
    finished    tasks that ended with an answer (not out of tokens or tool rounds)

The same benchmark runs against any OpenAI-compatible server (`--endpoint URL --model NAME`: our
`minimind serve`, ollama, vLLM, llama.cpp's server): the `openai` client offers the tools in the
request, receives `tool_calls`, runs them here with the same tool set, sends the results back as
`tool` messages and reads the final answer; so the numbers compare us with any other model.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

from ..errors import UserError

METRICS = ("call_rate", "valid", "exact", "accuracy", "contains", "rounds", "finished")


def load_tool_tasks(path, limit: int | None = None, only: list[str] | None = None) -> list[dict]:
    """Held-out tool tasks; at most `limit` per tool, only the tools in `only` (None: all)."""
    from .tasks import load_heldout

    records = [r for r in load_heldout(path) if r.get("family") == "tool"]
    for i, r in enumerate(records):
        if "tool" not in r or not isinstance(r.get("call"), dict):
            raise UserError(f"{path}: record {i + 1} has no 'tool' and 'call' (expected eval/tools_heldout.jsonl "
                            f"from `minimind data synth`)")
    if only:
        unknown = set(only) - {r["tool"] for r in records}
        if unknown:
            raise UserError(f"--tools: no tasks for {', '.join(sorted(unknown))} in {path}")
        records = [r for r in records if r["tool"] in only]
    per, out = defaultdict(int), []
    for r in records:
        if limit is None or per[r["tool"]] < limit:
            per[r["tool"]] += 1
            out.append(r)
    if not out:
        raise UserError(f"{path}: no tool tasks")
    return out


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    return a == b


def call_matches(call: dict, expected: dict) -> bool:
    """Same tool, same argument names, each value equal (numbers as numbers)."""
    args, want = call.get("arguments"), expected.get("arguments") or {}
    return (call.get("name") == expected.get("name") and isinstance(args, dict) and set(args) == set(want)
            and all(_same(args[k], want[k]) for k in want))


def score_episode(record: dict, traj) -> dict:
    """The metrics of one finished episode (an agent.Trajectory)."""
    from ..agent import call_is_valid
    from ..reward.tools import trajectory_parts
    from .tasks import is_correct

    parts = trajectory_parts({"gt": record["answer"]}, traj)
    calls = traj.tool_calls
    final = (traj.reply.get("content") or "") if traj.finish == "stop" else ""
    return {"called": bool(calls), "calls": len(calls), "valid_calls": sum(call_is_valid(c, traj.tools) for c in calls),
            "exact": bool(calls) and call_matches(calls[0], record["call"]), "accuracy": parts["answer"] == 1.0,
            "contains": bool(final) and is_correct(final, record["answer"]), "rounds": traj.rounds,
            "finished": traj.finish == "stop"}


def summarize(records: list[dict], scores: list[dict]) -> dict:
    """{"tools": {tool: metrics}, "overall": metrics}; each metric a share, rounds a mean."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r, s in zip(records, scores):
        groups[r["tool"]].append(s)

    def table(ss: list[dict]) -> dict:
        n, calls = len(ss), sum(s["calls"] for s in ss)
        return {"tasks": n, "call_rate": sum(s["called"] for s in ss) / n,
                "valid": sum(s["valid_calls"] for s in ss) / calls if calls else 0.0,
                "exact": sum(s["exact"] for s in ss) / n, "accuracy": sum(s["accuracy"] for s in ss) / n,
                "contains": sum(s["contains"] for s in ss) / n, "rounds": sum(s["rounds"] for s in ss) / n,
                "finished": sum(s["finished"] for s in ss) / n}

    return {"tools": {k: table(v) for k, v in sorted(groups.items())}, "overall": table(scores)}


def format_table(res: dict) -> str:
    head = f"{'tool':<15} {'tasks':>5} " + " ".join(f"{m:>9}" for m in METRICS)
    rows = [head]
    for name, m in [*res["tools"].items(), ("overall", res["overall"])]:
        cells = [f"{m[k]:>9.2f}" if k == "rounds" else f"{m[k]:>9.1%}" for k in METRICS]
        rows.append(f"{name:<15} {m['tasks']:>5} " + " ".join(cells))
    return "\n".join(rows)


# ----------------------------------------------------------------------------- a local checkpoint

def run_local(model, tok, records: list[dict], max_rounds: int = 2, max_new_tokens: int = 96,
              batch_size: int = 32, think: bool = False, progress: bool = False, desc: str = "eval tools") -> list:
    """Greedy agent episodes of a minimind model (the agent loop over the RL sampler) -> trajectories."""
    from tqdm.auto import tqdm

    from ..agent import run_agents, start
    from ..infer.generate import think_suppression
    from ..train.rl.train import engine_sampler

    generate = engine_sampler(model, tok)
    suppress = think_suppression(tok, think)
    out = []
    for s in tqdm(range(0, len(records), batch_size), disable=not progress, desc=desc, unit="batch"):
        batch = [start(tok, r["conversations"], think=think) for r in records[s:s + batch_size]]
        out += run_agents(generate, tok, batch, None, max_rounds, 0.0, max_new_tokens, None, think, suppress,
                          max_len=model.config.max_position_embeddings)
    return out


# ----------------------------------------------------------------------------- any OpenAI-compatible server

def _openai_request(conversations: list[dict]) -> tuple[list[dict], list[dict] | None]:
    """Our records keep the tools on the system message; the API takes them as the request's `tools`."""
    from ..agent import offered_tools

    tools = offered_tools(conversations)
    messages = [{k: v for k, v in m.items() if k != "tools"} for m in conversations]
    return messages, tools


def _arguments(text):
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except ValueError:
        return text  # left as it came: the validity check reports it
    return value


def run_endpoint(client, model: str, records: list[dict], max_rounds: int = 2, max_new_tokens: int = 96,
                 progress: bool = False) -> list:
    """Agent episodes against an OpenAI-compatible server; our tools run here -> trajectories."""
    from tqdm.auto import tqdm

    from .. import tools as toolset
    from ..agent import Trajectory

    out = []
    for r in tqdm(records, disable=not progress, desc="eval tools", unit="task"):
        messages, offered = _openai_request(r["conversations"])
        traj = Trajectory(list(r["conversations"]), [], [], [], offered, given=len(r["conversations"]))
        while True:
            choice = client.chat.completions.create(model=model, messages=messages, temperature=0,
                                                    max_tokens=max_new_tokens,
                                                    **({"tools": offered} if offered else {})).choices[0]
            msg, calls = choice.message, choice.message.tool_calls or []
            parsed = [{"name": c.function.name, "arguments": _arguments(c.function.arguments)} for c in calls]
            traj.reply = {"content": msg.content or "", "reasoning_content": None, "tool_calls": parsed}
            traj.messages.append({"role": "assistant", "content": msg.content or "", "tool_calls": parsed})
            if not calls:
                traj.finish = "stop" if choice.finish_reason == "stop" else "length"
                break
            if traj.rounds >= max_rounds:
                traj.finish = "rounds"
                break
            messages.append({"role": "assistant", "content": msg.content or "",
                             "tool_calls": [c.model_dump(exclude_none=True) for c in calls]})
            for c in calls:
                result = toolset.execute_openai(c, offered=traj.offered)
                traj.calls += 1
                traj.bad_calls += result.startswith("error")
                messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
                traj.messages.append({"role": "tool", "content": result})
            traj.rounds += 1
        out.append(traj)
    return out


def openai_client(endpoint: str, api_key: str | None, timeout: float = 120.0):
    try:
        import openai
    except ImportError:
        raise UserError("--endpoint needs the openai client: pip install openai") from None
    import os

    url = endpoint.rstrip("/")
    if not url.endswith("/v1"):
        url += "/v1"  # OpenAI-compatible servers answer under /v1
    return openai.OpenAI(base_url=url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "none",
                         max_retries=1, timeout=timeout)


def evaluate_tools(records: list[dict], trajectories: list) -> dict:
    scores = [score_episode(r, t) for r, t in zip(records, trajectories)]
    res = summarize(records, scores)
    res["samples"] = [{**s, "tool": r["tool"], "question": r["conversations"][-1]["content"], "answer": r["answer"],
                       "expected_call": r["call"], "calls": t.tool_calls, "reply": t.reply.get("content"),
                       "finish": t.finish} for r, t, s in zip(records, trajectories, scores)]
    return res


def run_eval_tools(args) -> dict:
    records = load_tool_tasks(args.data, args.limit, args.tools)
    if args.endpoint:
        if not args.model:
            raise UserError("--endpoint needs --model NAME (the model name the server serves)")
        if args.checkpoint:
            raise UserError("give a checkpoint or --endpoint, not both")
        import openai

        client = openai_client(args.endpoint, args.api_key)
        try:
            trajs = run_endpoint(client, args.model, records, args.max_rounds, args.max_new_tokens,
                                 progress=not args.no_progress)
        except openai.APIConnectionError as e:
            raise UserError(f"--endpoint {args.endpoint}: cannot connect ({e}); is the server running?") from None
        except openai.APIStatusError as e:
            raise UserError(f"--endpoint {args.endpoint}: the server answered HTTP {e.status_code}: {e.message}") from None
    else:
        if not args.checkpoint:
            raise UserError("give a checkpoint directory, or --endpoint URL --model NAME")
        from ..infer.generate import load_for_inference

        model, tok = load_for_inference(args.checkpoint, args.device)
        trajs = run_local(model, tok, records, args.max_rounds, args.max_new_tokens, args.batch_size,
                          args.think == "on", progress=not args.no_progress)
    res = evaluate_tools(records, trajs)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, ensure_ascii=False, indent=2, default=str))
    return res


def add_eval_tools_command(ev, positive) -> None:
    from ..cli import output_file

    s = ev.add_parser("tools", help="tool use per tool: call rate, call validity, argument exactness, answer accuracy",
                      description="Runs the model as an agent on held-out tool tasks (the tools really run) and "
                      "reports per tool and overall: call rate, valid calls, exact arguments, final-answer accuracy "
                      "(stated), rounds used. A local checkpoint, or any OpenAI-compatible server with "
                      "--endpoint URL --model NAME (the openai client runs the tools).")
    s.add_argument("checkpoint", nargs="?", help="checkpoint or run directory (or use --endpoint)")
    s.add_argument("--data", default="data/builtin/eval/tools_heldout.jsonl",
                   help="held-out tool tasks (eval/tools_heldout.jsonl from `minimind data synth`)")
    s.add_argument("--endpoint", help="base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--model", help="--endpoint: the model name to request")
    s.add_argument("--api-key", help="--endpoint: API key (default: $OPENAI_API_KEY, else none)")
    s.add_argument("--tools", type=lambda v: [x.strip() for x in v.split(",") if x.strip()], default=None,
                   help="comma-separated tools to evaluate (default: all)")
    s.add_argument("--limit", type=positive, default=None, help="at most this many tasks per tool")
    s.add_argument("--max-rounds", type=positive, default=2, help="tool rounds per task (default 2)")
    s.add_argument("--max-new-tokens", type=positive, default=96, help="tokens per model turn (default 96)")
    s.add_argument("--batch-size", type=positive, default=32, help="local: episodes run together (default 32)")
    s.add_argument("--think", choices=["on", "off"], default="off", help="local: open a <think> block")
    s.add_argument("--device", default="auto", help="local: auto, cpu, cuda, mps")
    s.add_argument("--json", type=output_file, help="also write the results (with every episode) to this JSON file")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.set_defaults(func=lambda args: run_eval_tools(args))
