"""Terminal chat (`minimind chat`) and one-shot generation (`minimind generate`).

The chat keeps the conversation history, streams the reply as it is generated (thinking shown
dimmed), and understands a few commands: /think on|off, /reset, /system TEXT, /exit. With
`--tools`, the model is offered built-in tools; each turn then runs through the agent loop
(minimind/agent.py): its calls are run, their results shown and handed back, until it answers.
"""

from __future__ import annotations

import dataclasses
import json
import sys

from ..errors import UserError
from .engine import Engine
from .generate import load_engine
from .sampling import SamplingParams, think_suppression

DIM, RESET = "\033[2m", "\033[0m"
HELP = "commands: /think on|off  /reset  /system TEXT  /exit   (Ctrl-D also exits)"


def sampling_from_args(args) -> SamplingParams:
    return SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty, max_new_tokens=args.max_new_tokens,
                          seed=args.seed).validate()


def stream_reply(gen: Engine, messages: list[dict], params: SamplingParams, think: bool, out=sys.stdout,
                 color: bool = True) -> dict:
    """Stream one assistant reply of the engine `gen` to `out`; return it parsed (content,
    reasoning_content, tool_calls)."""
    from ..tokenizer import render_chat

    ids, _ = render_chat(gen.tok, messages, add_generation_prompt=True, open_thinking=think)
    return stream_ids(gen, ids, params, think, out, color)[0]


def stream_ids(gen: Engine, ids: list[int], params: SamplingParams, think: bool, out=sys.stdout,
               color: bool = True) -> tuple[dict, object]:
    """Stream the reply that follows the rendered prompt `ids`: -> (the reply parsed, the engine's
    Result: its tokens and finish reason)."""
    from .parse import StreamParser

    parser = StreamParser(open_thinking=think)
    in_reasoning = False
    done = []

    def show(events):
        nonlocal in_reasoning
        for kind, value in events:
            if kind == "reasoning" and not in_reasoning:
                out.write(DIM if color else "")
                in_reasoning = True
            elif kind != "reasoning" and in_reasoning:
                out.write((RESET if color else "") + "\n")
                in_reasoning = False
            if kind == "tool_call":
                out.write(f"\n[tool call] {value['name']}({json.dumps(value['arguments'], ensure_ascii=False)})")
            else:
                out.write(value)
            out.flush()

    params = dataclasses.replace(params, suppress_ids=think_suppression(gen.tok, think))
    for delta in gen.stream(ids, params, on_result=done.append):
        show(parser.feed(delta))
    show(parser.flush())
    if in_reasoning and color:
        out.write(RESET)
    result = parser.finish()
    out.write("\n")
    out.flush()
    return result, done[0] if done else None


def tool_turn(gen: Engine, messages: list[dict], params: SamplingParams, think: bool, tools: list[dict],
              max_rounds: int = 3, out=sys.stdout, color: bool = True) -> list[dict]:
    """One user turn with tools offered, through the agent loop (minimind/agent.py): stream the
    model's turn; if it calls tools, run them (the built-in tool set, only the offered ones), show
    their results and let it go on, up to `max_rounds` tool rounds. -> the messages the turn added
    (assistant turns with their tool_calls, tool results, the final answer)."""
    from .. import agent

    traj = agent.start(gen.tok, messages, tools=tools, think=think)
    while not traj.done:
        before = len(traj.messages)
        _, result = stream_ids(gen, traj.ids, params, think, out, color)
        tokens, finish = (result.tokens, result.finish_reason) if result is not None else ([], "error")
        agent.step(gen.tok, traj, tokens, finish, None, max_rounds, think)
        for m in traj.messages[before + 1:]:  # the tool results of this round
            out.write(f"{DIM if color else ''}[tool result] {m['content']}{RESET if color else ''}\n")
        if traj.messages[before + 1:]:
            out.write("minimind> ")
        out.flush()
    if traj.finish == "rounds":
        out.write(f"(stopped after {max_rounds} tool rounds: --max-tool-rounds)\n")
    elif traj.finish == "length":
        out.write("(the reply ran out of tokens: --max-new-tokens)\n")
    return traj.messages[traj.given:]


def offered_tools(spec: str | None) -> list[dict] | None:
    """`--tools all` or a comma-separated list of built-in tool names -> their OpenAI schemas."""
    from .. import tools as toolset

    if not spec:
        return None
    names = toolset.names() if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in toolset.names()]
    if unknown or not names:
        raise UserError(f"--tools {spec!r}: unknown tool {', '.join(unknown) or '(none given)'}; "
                        f"choose 'all' or some of {', '.join(toolset.names())}", param="tools")
    return toolset.schemas(names)


def _engine(args) -> Engine:
    return load_engine(args.checkpoint, args.device, args.dtype, getattr(args, "quantize", "none"),
                       compile=getattr(args, "compile", "auto"), max_batch=1)


def chat_loop(args) -> None:
    params = sampling_from_args(args)
    tools = offered_tools(getattr(args, "tools", None))
    if tools and args.max_tool_rounds < 0:
        raise UserError(f"--max-tool-rounds must be >= 0, got {args.max_tool_rounds}", param="max_tool_rounds")
    gen = _engine(args)
    think = args.think == "on"
    system = args.system
    if tools and system is None:  # the system prompt the tool conversations are trained with
        from ..data.synth_tools import TOOL_SYSTEM

        system = TOOL_SYSTEM[0]
    history: list[dict] = []
    offered = f"; tools: {', '.join(t['function']['name'] for t in tools)}" if tools else ""
    print(f"minimind chat ({args.checkpoint}); thinking {'on' if think else 'off'}{offered}. {HELP}")
    while True:
        try:
            line = input("\nyou> ").strip()
        except EOFError:
            print()
            return
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, rest = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                return
            if cmd == "/reset":
                history = []
                print("(conversation cleared)")
            elif cmd == "/think":
                think = {"on": True, "off": False}.get(rest.strip(), not think)
                print(f"(thinking {'on' if think else 'off'})")
            elif cmd == "/system":
                system = rest.strip() or None
                history = []
                print(f"(system prompt {'set' if system else 'cleared'}; conversation cleared)")
            else:
                print(HELP)
            continue
        if args.no_history:
            history = []
        history.append({"role": "user", "content": line})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        print("minimind> ", end="", flush=True)
        if tools:
            history += tool_turn(gen, messages, params, think, tools, args.max_tool_rounds, color=sys.stdout.isatty())
            continue
        reply = stream_reply(gen, messages, params, think)
        history.append({"role": "assistant", "content": reply["content"],
                        "reasoning_content": reply["reasoning_content"] or None})


def generate_once(args) -> None:
    params = sampling_from_args(args)
    gen = _engine(args)
    if args.raw:
        ids = gen.tok.encode(args.prompt)
        if not ids:
            raise UserError("prompt is empty", param="prompt")
        sys.stdout.write(args.prompt)
        for delta in gen.stream(ids, params):
            sys.stdout.write(delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    stream_reply(gen, [{"role": "user", "content": args.prompt}], params, args.think == "on",
                 color=sys.stdout.isatty())


# ----------------------------------------------------------------------------- commands

def add_sampling_args(p) -> None:
    from ..cli import positive_int
    from .quant import add_quantize_arg

    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--max-new-tokens", type=positive_int, default=256, help="reply length cap (default 256)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (same seed, same reply)")
    g.add_argument("--think", choices=["on", "off"], default="off",
                   help="open a <think> block before answering (adaptive thinking switch)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    g.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16, fp32")
    add_quantize_arg(g)
    g.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="fused decode step: torch.compile on CPU (one to a few minutes to compile, then "
                        "faster tokens), CUDA graphs on GPU; auto = GPU only (default)")


def add_commands(sub) -> None:
    s = sub.add_parser("chat", help="chat with a checkpoint in the terminal")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("--system", default=None, help="system prompt")
    s.add_argument("--no-history", action="store_true", help="each message starts a new conversation")
    s.add_argument("--tools", default=None, metavar="all|NAME,...",
                   help="offer built-in tools (calculator, unit_converter, lookup, current_time, weather, "
                        "exchange_rate; the last three are labelled mocks): the model may call them, the "
                        "chat runs them and shows their results. The built-in data offers 1-3 tools per "
                        "conversation, so models trained on it do best with at most three (docs/tools.md)")
    s.add_argument("--max-tool-rounds", type=int, default=3, help="tool rounds per reply (default 3)")
    add_sampling_args(s)
    s.set_defaults(func=chat_loop)

    s = sub.add_parser("generate", help="one reply (or raw continuation) for a prompt, printed as it streams")
    s.add_argument("checkpoint")
    s.add_argument("prompt")
    s.add_argument("--raw", action="store_true", help="continue the text as is (no chat template)")
    add_sampling_args(s)
    s.set_defaults(func=generate_once)
