"""`minimind data tool-mix`: a tool-heavy fine-tuning set drawn beside a built-in corpus.

The built-in `sft.jsonl` teaches tool use in about a fifth of its conversations, with results a model
can also remember. A tool fine-tune needs more of them, and results that only the tool knows
(docs/tools.md, "What a small model learns"): this command writes `--conversations` new tool
conversations (call -> result -> an answer that states the result) plus `--replay` conversations of
the corpus's own `sft.jsonl`, shuffled together, for `minimind sft --init <an SFT model>`.

* `--lookup-share` of the new conversations need `lookup`; the rest draw a tool by the corpus's
  weights (synth_tools.TOOL_WEIGHTS without lookup). 7% ask two questions and make two calls in one
  turn, as in the corpus.
* `--invented`: share of lookups about an invented subject ("the capital of Denvensha"), whose
  answer only the tool's result gives.
* `--substituted`: share of the other lookups whose tool result disagrees with the corpus (another
  subject's value), so the reply has to follow the result rather than memory.
* `--clock`: share of `current_time` / `weather` tasks at a random instant of the mock clock.

Every task is drawn with the corpus's own held-out split (read from its manifest.json: the seed, and
the mix, whose table sizes the split also depends on), so no held-out key of
`eval/tools_heldout.jsonl` or `eval/heldout.jsonl` enters the mix.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

from ..errors import UserError

PARALLEL_SHARE = 0.07  # conversations with two calls in one turn, as in the corpus (synth._tool_or_direct)


def _share(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise UserError(f"--{name} must be a share between 0 and 1, got {value}", param=name)
    return value


def corpus_split(corpus: Path) -> tuple[int, str]:
    """The seed and mix a corpus directory was written with (its manifest.json): together they fix its
    held-out split (a mix sets the size of the fact tables the split is drawn from)."""
    manifest = corpus / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{corpus}: no manifest.json; --corpus must be a directory written by `minimind data synth`",
                        param="corpus")
    from .synth import MIXES

    try:
        meta = json.loads(manifest.read_text(encoding="utf-8"))
        seed, mix = int(meta["seed"]), str(meta.get("mix", "default"))
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{manifest}: cannot read its 'seed' ({e}); write the corpus again with "
                        "`minimind data synth`", param="corpus") from None
    if mix not in MIXES:
        raise UserError(f"{manifest}: unknown mix {mix!r} (this version knows {', '.join(MIXES)}); write the "
                        "corpus again with `minimind data synth`", param="corpus")
    return seed, mix


def tool_mix(corpus: str | Path, out: str | Path, conversations: int = 12000, replay: int = 5000,
             lookup_share: float = 0.5, invented: float = 0.5, substituted: float = 0.25, clock: float = 0.7,
             seed: int = 0) -> Counter:
    """Write the mix to `out` (JSONL of {"conversations": [...]}); returns the count of each kind."""
    from .synth import Gen, _mix
    from .synth_tools import ToolTasks

    corpus, out = Path(corpus), Path(out)
    if out.is_dir():
        raise UserError(f"--out {out}: a directory; give a file name such as {out / 'tool_mix.jsonl'}", param="out")
    if conversations < 0 or replay < 0:
        raise UserError("--conversations and --replay must be >= 0", param="conversations")
    for name, value in (("lookup-share", lookup_share), ("invented", invented), ("substituted", substituted),
                        ("clock", clock)):
        _share(name, value)
    seed_of_corpus, mix = corpus_split(corpus)
    replayed = _replayed(corpus, replay, seed)
    with _mix(mix):  # the corpus's table sizes: its split, and the subjects a task is drawn from
        rng = random.Random(f"tool-mix/{seed}")
        rows, counts = _draw(ToolTasks(Gen(seed_of_corpus)), rng, conversations, lookup_share, invented,
                             substituted, clock)
    counts["replayed"] = len(replayed)
    rows += replayed
    rng.shuffle(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    tmp.replace(out)
    return counts


def _replayed(corpus: Path, replay: int, seed: int) -> list[str]:
    """`replay` lines of the corpus's sft.jsonl, drawn by `seed`, each checked to be a conversation."""
    if not replay:
        return []
    sft = corpus / "sft.jsonl"
    if not sft.is_file():
        raise UserError(f"{sft}: not found; --replay needs the corpus's sft.jsonl (or --replay 0)", param="replay")
    lines = [(n, line) for n, line in enumerate(sft.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if replay > len(lines):
        raise UserError(f"--replay {replay}: {sft} has only {len(lines)} conversations", param="replay")
    replayed = []
    for n, line in random.Random(f"tool-mix/{seed}/replay").sample(lines, replay):
        try:
            json.loads(line)["conversations"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{sft}:{n}: not a JSON record with a 'conversations' field; fix or remove "
                            "that line", param="replay") from None
        replayed.append(line)
    return replayed


def _draw(tasks, rng: random.Random, conversations: int, lookup_share: float, invented: float,
          substituted: float, clock: float) -> tuple[list[str], Counter]:
    """`conversations` new tool conversations (JSON lines) drawn from `tasks`, and the count per tool."""
    from .synth_tools import TOOL_WEIGHTS, tool_convo

    tasks.INVENTED_SHARE, tasks.SUBSTITUTED_SHARE, tasks.CLOCK_SHARE = invented, substituted, clock
    others = {k: v for k, v in TOOL_WEIGHTS.items() if k != "lookup"}
    counts: Counter = Counter()
    rows = []
    for _ in range(conversations):
        tool = ("lookup" if rng.random() < lookup_share
                else rng.choices(list(others), list(others.values()))[0])
        first = tasks.train(rng, tool)
        both = [first, tasks.train(rng, tool, first.lang)] if rng.random() < PARALLEL_SHARE else [first]
        counts[tool] += 1
        rows.append(json.dumps({"conversations": tool_convo(rng, both)}, ensure_ascii=False))
    return rows, counts
