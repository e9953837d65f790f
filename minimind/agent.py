"""The agent loop: the model answers, calls tools, reads their results and answers again.

Used by everything that lets the model use tools - the tool benchmark (eval/tools.py) and agentic
RL (train/rl/rollout.py with `--agent`) - over any batch of conversations at once (one generation
call per round for all of them). A conversation runs until the model answers without a tool call,
or `max_rounds` tool rounds have been used, or it runs out of tokens. Every call of one turn runs
(parallel calls), each answered by its own `tool` message, in order.

Generation comes in as a callable (`Sampler`, e.g. train/rl/train.py `engine_sampler`), so this
loop never depends on how tokens are produced. Tools run through `execute(call) -> str`; by
default the built-in tool set (minimind.tools), limited to the tools the conversation offers.

Token-exact. The trajectory's token ids are never re-tokenized: each round appends exactly the
tokens the model sampled (ending with its <|im_end|>), then the rendered tokens of what comes next
- the newline after <|im_end|>, every tool result as a `tool` turn, and the next generation prompt
`<|im_start|>assistant\\n<think>...` - and a finished conversation ends with the newline the
template puts after every <|im_end|>. Special tokens split the text the tokenizer sees, so these
pieces tokenize exactly as they do inside the chat template's rendering of the whole conversation:
when the model writes its turns in the template's canonical form, the trajectory equals
`render_chat(final conversation)` token for token (tests/test_agent.py). When it does not (odd
spacing, a non-canonical tokenization of the same text), the trajectory still holds what the
model really produced - the tokens RL must score - and the parsed messages hold what it meant.

Two masks over the ids:
    action_mask   1 on tokens the model sampled: its reasoning, calls, answer and closing <|im_end|>;
                  never the prompt, the tool results or the generation prompts (what RL trains on)
    sft_mask      1 where supervised fine-tuning trains on the same conversation (tokenizer.py): the
                  whole assistant body after `<|im_start|>assistant\\n`, which includes the
                  `<think>...` opening that the generation prompt supplied
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from . import tools as toolset
from .infer.parse import parse_assistant
from .tokenizer import render_chat

# generate(prompts, temperature, max_new_tokens, seeds, suppress_ids) -> [(tokens, finish_reason)]
Sampler = Callable[..., list]


@dataclass
class Trajectory:
    messages: list[dict]  # the conversation: given messages, then parsed assistant turns and tool results
    ids: list[int]
    action_mask: list[int]
    sft_mask: list[int]
    tools: list | None = None
    rounds: int = 0  # tool rounds used
    calls: int = 0  # tool calls made
    bad_calls: int = 0  # calls of unknown tools or with arguments that failed
    finish: str = ""  # "stop": answered; "length": ran out of tokens; "rounds": still calling tools
    reply: dict = field(default_factory=dict)  # the last assistant message, parsed
    given: int = 0  # how many of `messages` were given (the prompt); the rest the loop added

    @property
    def done(self) -> bool:
        return bool(self.finish)

    @property
    def offered(self) -> list[str]:
        """Names of the tools this conversation offers."""
        return [t.get("function", t).get("name") for t in self.tools or []]

    @property
    def tool_calls(self) -> list[dict]:
        """Every call the model made, in order."""
        return [c for m in self.messages[self.given:] if m["role"] == "assistant" for c in m.get("tool_calls") or []]


def offered_tools(messages: list[dict], tools: list | str | None = None) -> list | None:
    """The tools a conversation offers: `tools`, or else the JSON list on its system message (the
    public data format), as a list of OpenAI tool schemas."""
    source = tools if tools else (messages[0].get("tools") if messages and messages[0]["role"] == "system" else None)
    if isinstance(source, str):
        source = json.loads(source)
    return list(source) if source else None


def start(tok, messages: list[dict], tools: list | None = None, think: bool = False) -> Trajectory:
    """A trajectory holding the rendered prompt, ready for the model's first turn. The tools are
    `tools` or those on the system message (see `offered_tools`)."""
    ids, _ = render_chat(tok, messages, tools=tools, add_generation_prompt=True, open_thinking=think)
    opening = _think_opening(tok, think)
    sft = [0] * (len(ids) - len(opening)) + [1] * len(opening)  # SFT trains the think opening too
    return Trajectory(list(messages), list(ids), [0] * len(ids), sft, offered_tools(messages, tools),
                      given=len(messages))


def _think_opening(tok, think: bool) -> list[int]:
    """Tokens the generation prompt adds after `<|im_start|>assistant\\n`."""
    head, _ = render_chat(tok, [{"role": "user", "content": "x"}], add_generation_prompt=False)
    full, _ = render_chat(tok, [{"role": "user", "content": "x"}], add_generation_prompt=True,
                          open_thinking=think)
    bare = tok.encode("<|im_start|>assistant\n")
    return full[len(head) + len(bare):]


def _continuation(tok, tool_messages: list[dict], think: bool) -> tuple[list[int], int]:
    """Tokens after the model's <|im_end|>: newline, tool turns, next generation prompt; and the
    length of the think opening at its end (SFT-trained)."""
    ids, _ = render_chat(tok, tool_messages, add_generation_prompt=True, open_thinking=think)
    return tok.encode("\n") + ids, len(_think_opening(tok, think))


def step(tok, traj: Trajectory, tokens: list[int], finish: str, execute: Callable[[dict], str] | None,
         max_rounds: int, think: bool) -> None:
    """Append one model turn; run its tool calls (if rounds are left) and append their results."""
    stop = {tok.eos_id, tok.eot_id}
    traj.ids += tokens
    traj.action_mask += [1] * len(tokens)
    traj.sft_mask += [1] * len(tokens)
    text = tok.decode([t for t in tokens if t not in stop])
    reply = parse_assistant(text, open_thinking=think)
    traj.reply = reply
    message = {"role": "assistant", "content": reply["content"], "reasoning_content": reply["reasoning_content"]}
    if reply["tool_calls"]:
        message["tool_calls"] = reply["tool_calls"]
    traj.messages.append(message)
    if finish != "stop" or not tokens or tokens[-1] not in stop:
        traj.finish = "length"
        return
    if not reply["tool_calls"] or traj.rounds >= max_rounds:
        traj.finish = "rounds" if reply["tool_calls"] else "stop"
        newline = tok.encode("\n")  # the template ends every turn with <|im_end|>\n: the ids stay its rendering
        traj.ids += newline
        traj.action_mask += [0] * len(newline)
        traj.sft_mask += [0] * len(newline)
        return
    results = []
    for call in reply["tool_calls"]:
        out = execute(call) if execute is not None else toolset.execute(call, offered=traj.offered)
        traj.calls += 1
        traj.bad_calls += out.startswith("error")
        results.append({"role": "tool", "content": out})
    traj.rounds += 1
    cont, opening = _continuation(tok, results, think)
    traj.messages += results
    traj.ids += cont
    traj.action_mask += [0] * len(cont)
    traj.sft_mask += [0] * (len(cont) - opening) + [1] * opening


def run_agents(generate: Sampler, tok, trajectories: list[Trajectory], execute: Callable[[dict], str] | None = None,
               max_rounds: int = 2, temperature: float = 0.0, max_new_tokens: int = 96, seeds=None,
               think: bool = False, suppress_ids=(), max_len: int | None = None) -> list[Trajectory]:
    """Run every trajectory to its end; one generation call per round for all that are still going.

    `execute(call) -> str` answers a call; None: the built-in tools, only those each conversation offers."""
    seeds = list(seeds) if seeds is not None else [0] * len(trajectories)
    for round_ in range(max_rounds + 1):
        live = [i for i, t in enumerate(trajectories) if not t.done]
        if not live:
            break
        if max_len is not None:  # keep within the model's context
            for i in [i for i in live if len(trajectories[i].ids) + max_new_tokens > max_len]:
                trajectories[i].finish = "length"
            live = [i for i in live if not trajectories[i].done]
        outs = generate([trajectories[i].ids for i in live], temperature, max_new_tokens,
                        [seeds[i] + 7919 * round_ for i in live], suppress_ids)
        for i, (tokens, finish) in zip(live, outs):
            step(tok, trajectories[i], list(tokens), finish, execute, max_rounds, think)
    return trajectories


def call_is_valid(call: dict, tools: list | None) -> bool:
    """A parsed call names an offered tool and its arguments satisfy that tool's offered schema.

    The built-in tool set checks it (tools.check); offered schemas that are not the built-in ones
    (a user's own tools) get a registry of their own for the check."""
    tools = tools or []
    names = [t.get("function", t).get("name") for t in tools]
    if all(n in toolset.REGISTRY and toolset.schemas([n])[0] == t for n, t in zip(names, tools)):
        return toolset.check(call, offered=names) is None
    registry = toolset.ToolRegistry()
    for name, schema in zip(names, tools):
        registry.register(name, lambda **kw: "", schema, replace=True)
    return registry.check(call) is None


def describe(traj: Trajectory) -> str:
    """The trajectory's messages as readable lines (for logs and reports)."""
    return "\n".join(f"{m['role']}: {m.get('content') or ''}"
                     + (f" {json.dumps(m['tool_calls'], ensure_ascii=False)}" if m.get("tool_calls") else "")
                     for m in traj.messages)
