"""Terminal chat (`minimind chat`) and one-shot generation (`minimind generate`).

The chat keeps the conversation history, streams the reply as it is generated (thinking shown
dimmed), and understands a few commands: /think on|off, /reset, /system TEXT, /exit.
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
    from .parse import StreamParser

    ids, _ = render_chat(gen.tok, messages, add_generation_prompt=True, open_thinking=think)
    parser = StreamParser(open_thinking=think)
    in_reasoning = False

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
    for delta in gen.stream(ids, params):
        show(parser.feed(delta))
    show(parser.flush())
    if in_reasoning and color:
        out.write(RESET)
    result = parser.finish()
    out.write("\n")
    out.flush()
    return result


def _engine(args) -> Engine:
    return load_engine(args.checkpoint, args.device, args.dtype, getattr(args, "quantize", "none"),
                       compile=getattr(args, "compile", "auto"), max_batch=1)


def chat_loop(args) -> None:
    params = sampling_from_args(args)
    gen = _engine(args)
    think = args.think == "on"
    system = args.system
    history: list[dict] = []
    print(f"minimind chat ({args.checkpoint}); thinking {'on' if think else 'off'}. {HELP}")
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
    from .quant import add_quantize_arg

    g = p.add_argument_group("sampling")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (1 = off)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    g.add_argument("--max-new-tokens", type=int, default=256)
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
    add_sampling_args(s)
    s.set_defaults(func=chat_loop)

    s = sub.add_parser("generate", help="one reply (or raw continuation) for a prompt, printed as it streams")
    s.add_argument("checkpoint")
    s.add_argument("prompt")
    s.add_argument("--raw", action="store_true", help="continue the text as is (no chat template)")
    add_sampling_args(s)
    s.set_defaults(func=generate_once)
