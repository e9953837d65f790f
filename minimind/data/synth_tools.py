"""Tool-use data for the built-in corpus: every tool's call -> result -> answer, held-out splits, RL prompts.

Each task is a question that one tool answers, written in English or Chinese:

    calculator       "What is 37 times 59?"             calculator(expression="37*59")      -> 2183
    lookup           "What is the capital of France?"   lookup(subject, relation)           -> France, capital: Paris
    unit_converter   "Convert 10 kilometers to miles."  unit_converter(10, ...)             -> 6.213712
    current_time     "What time is it in Paris?"        current_time(timezone="Paris")      -> 10:30   (mock)
    weather          "How warm is it in Tokyo?"         weather(city="Tokyo")               -> 27      (mock)
    exchange_rate    "How much is 100 USD in EUR?"      exchange_rate("USD", "EUR", 100)    -> 92      (mock)

The tool result is what `minimind.tools` really answers (the task runs the call), and the final
answer *states* it in a short sentence ("10 kilometers is 6.213712 miles."): a small model learns
to copy the result into its reply, which is the step it used to skip. The arguments copy words of
the question (the tools accept English and Chinese names), so a call is a copy as well.

A conversation offers the needed tool and up to two others (shuffled), as the tools list of its
system message, so the model learns to pick a tool by name. When the needed tool is not offered,
the model answers directly (`direct_answer`): that is when calling nothing is right.

Held-out tasks (drawn from their own seeded generator, so they depend on the seed only) never
appear in any training file, per tool:

    calculator       the corpus's held-out multiplication pairs (`Split.mul_pairs`)
    lookup           the corpus's held-out facts (`Split.facts`): the same facts that
                     eval/heldout.jsonl family "fact" asks without tools
    unit_converter   (value, unit pair) triples
    current_time     cities;  weather: other cities
    exchange_rate    (amount, base, quote) triples

Files (written by `minimind data synth` through synth.py): the tool part of sft.jsonl,
agent_rl.jsonl ({"conversations": [system with tools, user], "gt", "tool"}) and
eval/tools_heldout.jsonl ({"family": "tool", "tool", "lang", "conversations", "answer", "call"}).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from .. import tools as toolset
from ..tools import mocks
from ..tools.lookup import Encyclopedia
from ..tools.mocks import CITIES
from . import invented

TOOL_NAMES = ["calculator", "lookup", "unit_converter", "current_time", "weather", "exchange_rate"]
# how often each tool is the one needed, in training data and RL prompts
TOOL_WEIGHTS = {"calculator": 25, "lookup": 30, "unit_converter": 15, "current_time": 10, "weather": 10,
                "exchange_rate": 10}

_YEAR_START = datetime(2025, 1, 1, tzinfo=timezone.utc)

TOOL_SYSTEM = ("You are MiniMind, a helpful assistant. You can call tools when they help.",
               "你是MiniMind，一个乐于助人的助手，必要时可以调用工具。")

# (English argument/question word for the from unit, to unit, Chinese names, value range)
UNIT_PAIRS = [
    ("kilometers", "miles", "公里", "英里", (1, 500)),
    ("miles", "kilometers", "英里", "公里", (1, 500)),
    ("kilograms", "pounds", "公斤", "磅", (1, 300)),
    ("pounds", "kilograms", "磅", "公斤", (1, 300)),
    ("degrees Celsius", "degrees Fahrenheit", "摄氏度", "华氏度", (-30, 45)),
    ("degrees Fahrenheit", "degrees Celsius", "华氏度", "摄氏度", (0, 110)),
    ("meters", "feet", "米", "英尺", (1, 1000)),
    ("feet", "meters", "英尺", "米", (1, 1000)),
    ("liters", "gallons", "升", "加仑", (1, 200)),
    ("hours", "minutes", "小时", "分钟", (1, 48)),
    ("inches", "centimeters", "英寸", "厘米", (1, 100)),
    ("kilograms", "jin", "公斤", "斤", (1, 100)),
]
UNIT_Q = (["How many {to} are {v} {frm}?", "Convert {v} {frm} to {to}.", "What is {v} {frm} in {to}?"],
          ["{v}{frm}等于多少{to}？", "把{v}{frm}换算成{to}。", "{v}{frm}是多少{to}？"])
CURRENCIES = [("USD", "美元"), ("EUR", "欧元"), ("GBP", "英镑"), ("JPY", "日元"), ("CNY", "人民币"),
              ("KRW", "韩元"), ("CAD", "加元"), ("AUD", "澳元"), ("CHF", "瑞士法郎"), ("HKD", "港元"),
              ("SGD", "新加坡元"), ("INR", "印度卢比")]
FX_Q = (["How much is {amt} {base} in {quote}?", "Convert {amt} {base} to {quote}.",
         "How many {quote} do I get for {amt} {base}?"],
        ["{amt}{base}能换多少{quote}？", "把{amt}{base}换成{quote}。", "{amt}{base}等于多少{quote}？"])
TIME_Q = (["What time is it in {city}?", "What is the current time in {city}?", "Tell me the time in {city}."],
          ["{city}现在几点？", "{city}现在是什么时间？", "告诉我{city}现在的时间。"])
WEATHER_Q = (["What is the weather like in {city}?", "How warm is it in {city} today?",
              "What's the temperature in {city}?"],
             ["{city}今天天气怎么样？", "{city}现在多少度？", "{city}的气温是多少？"])
WEATHER_F_Q = (["What is the temperature in {city} in Fahrenheit?", "How warm is it in {city}, in Fahrenheit?"],
               ["{city}的气温是多少华氏度？", "用华氏度说说{city}的气温。"])


@dataclass
class ToolTask:
    """One question, the call that answers it, the tool's result and the answer that states it."""

    tool: str
    lang: str
    question: str
    arguments: dict
    result: str  # what the tool answers (tools.execute)
    answer: str  # the final reply: a sentence stating the result
    gt: str  # the short answer a correct reply must state

    @property
    def call(self) -> dict:
        return {"name": self.tool, "arguments": self.arguments}


@dataclass
class ToolSplit:
    """Held-out tool tasks beyond the corpus's own split (which holds the mul pairs and the facts)."""

    unit: set  # (pair index, value)
    time_cities: set  # English city names
    weather_cities: set
    fx: set  # (base index, quote index, amount)


def draw_tool_split(seed: int) -> ToolSplit:
    rng = random.Random(f"minimind-synth/{seed}/tool-split")
    unit = set()
    while len(unit) < 48:
        k = rng.randrange(len(UNIT_PAIRS))
        unit.add((k, rng.randint(*UNIT_PAIRS[k][4])))
    cities = [c[0] for c in CITIES]
    rng.shuffle(cities)
    fx = set()
    while len(fx) < 40:
        a, b = rng.sample(range(len(CURRENCIES)), 2)
        fx.add((a, b, rng.choice([rng.randint(1, 100), rng.randint(1, 20) * 50])))
    return ToolSplit(unit, set(cities[:12]), set(cities[12:24]), fx)


def _run(tool: str, args: dict) -> str:
    out = toolset.execute({"name": tool, "arguments": args})
    if out.startswith("error"):  # the generator asked something the tool refuses: a bug here, not data
        raise RuntimeError(f"synth_tools: {tool}({args}) -> {out}")
    return out


def _end(lang: str) -> str:
    return "." if lang == "en" else "。"


# ============================================================================ one task per tool

def calculator_task(rng: random.Random, lang: str, pair: tuple[int, int] | None, big: bool = False) -> ToolTask:
    """A product of `pair` (or a big addition): "37 × 59 = 2183." or "The result is 2183."."""
    from .synth import BIG_ADD_Q, MUL_Q

    li = lang == "zh"
    if big:
        a, b = rng.randint(100, 9999), rng.randint(100, 9999)
        q, expr, shown = rng.choice(BIG_ADD_Q[li]).format(a=a, b=b), f"{a}+{b}", f"{a} + {b}"
    else:
        a, b = pair
        q, expr, shown = rng.choice(MUL_Q[li]).format(a=a, b=b), f"{a}*{b}", f"{a} × {b}"
    result = _run("calculator", {"expression": expr})
    answer = f"{shown} = {result}{_end(lang)}"
    if not big and rng.random() < 0.5:
        answer = f"The result is {result}." if not li else f"计算结果是{result}。"
    return ToolTask("calculator", lang, q, {"expression": expr}, result, answer, result)


def lookup_task(rng: random.Random, lang: str, fact, book: Encyclopedia | None = None) -> ToolTask:
    """A fact question; the answer is the corpus's one answer sentence ("The capital of France is Paris.").
    `book`: the encyclopedia that answers (an invented subject's); by default the built-in lookup tool."""
    subject = fact.subj.name if lang == "en" else fact.subj.zh
    args = {"subject": subject, "relation": fact.rel.name}
    result = book(**args) if book else _run("lookup", args)
    if not result.endswith((": " + fact.short(lang), "：" + fact.short(lang))):
        raise RuntimeError(f"synth_tools: lookup{args} -> {result!r}, the corpus says {fact.short(lang)!r}")
    return ToolTask("lookup", lang, fact.question(lang, rng), args, result, fact.answer_sentence(lang),
                    fact.short(lang))


def unit_task(rng: random.Random, lang: str, key: tuple[int, int]) -> ToolTask:
    k, value = key
    en_from, en_to, zh_from, zh_to, _ = UNIT_PAIRS[k]
    frm, to = (en_from, en_to) if lang == "en" else (zh_from, zh_to)
    args = {"value": value, "from_unit": frm, "to_unit": to}
    result = _run("unit_converter", args)
    converted = result.split(" = ", 1)[1][: -len(to) - 1]
    answer = (f"{value} {frm} is {converted} {to}." if lang == "en" else f"{value}{frm}等于{converted}{to}。")
    return ToolTask("unit_converter", lang, rng.choice(UNIT_Q[lang == "zh"]).format(v=value, frm=frm, to=to),
                    args, result, answer, converted)


def _city_name(city: str, lang: str) -> str:
    return city if lang == "en" else next(c[1] for c in CITIES if c[0] == city)


def time_task(rng: random.Random, lang: str, city: str) -> ToolTask:
    name = _city_name(city, lang)
    args = {"timezone": name}
    result = _run("current_time", args)
    hhmm = re.search(r"\d\d:\d\d", result).group()
    answer = (f"It is {hhmm} in {name} (mock clock)." if lang == "en" else f"{name}现在是{hhmm}（模拟时钟）。")
    return ToolTask("current_time", lang, rng.choice(TIME_Q[lang == "zh"]).format(city=name), args, result,
                    answer, hhmm)


def weather_task(rng: random.Random, lang: str, city: str) -> ToolTask:
    name, li = _city_name(city, lang), lang == "zh"
    fahrenheit = rng.random() < 0.25
    args = {"city": name, **({"unit": "fahrenheit"} if fahrenheit else {})}
    q = rng.choice((WEATHER_F_Q if fahrenheit else WEATHER_Q)[li]).format(city=name)
    result = _run("weather", args)
    condition, temp = re.split(r"[:：]\s*", result, maxsplit=1)[1].split("，" if li else ", ")[:2]
    number = temp.split()[0]
    answer = (f"In {name} it is {condition}, {temp} (mock weather)." if not li
              else f"{name}现在{condition}，{temp}（模拟天气）。")
    return ToolTask("weather", lang, q, args, result, answer, number)


def fx_task(rng: random.Random, lang: str, key: tuple[int, int, int]) -> ToolTask:
    a, b, amount = key
    li = lang == "zh"
    base, quote = CURRENCIES[a][li], CURRENCIES[b][li]
    args = {"base": base, "quote": quote, "amount": amount}
    result = _run("exchange_rate", args)
    converted = result.split(" = ", 1)[1].split()[0]
    answer = (f"{amount} {base} is {converted} {quote} (mock rates)." if not li
              else f"{amount}{base}可以换{converted}{quote}（模拟汇率）。")
    return ToolTask("exchange_rate", lang, rng.choice(FX_Q[li]).format(amt=amount, base=base, quote=quote),
                    args, result, answer, converted)


# ============================================================================ training and held-out draws

class ToolTasks:
    """Draws tool tasks for training (never a held-out key) or lists the held-out ones.

    Tasks whose result a model could remember instead of read are, in part, made unrememberable:
    `INVENTED_SHARE` of the training lookups ask about an invented subject (invented.py) that only
    the tool's answer names, and `CLOCK_SHARE` of the current_time and weather tasks run at a random
    instant of the mock clock (so a city's time and weather change from one conversation to the
    next). Held-out tasks and RL prompts keep the built-in tables and the default clock.
    `SUBSTITUTED_SHARE` of the remaining (real) lookups get a tool answer that differs from the
    corpus, another subject's value (invented.swap_answer), so that the reply must follow the result
    even where the model remembers the fact; no held-out value is ever used.
    """

    INVENTED_SHARE = 0.0
    SUBSTITUTED_SHARE = 0.0
    CLOCK_SHARE = 0.0

    def __init__(self, g):
        self.g = g  # synth.Gen: facts, the corpus split, guarded samplers
        self.split = draw_tool_split(g.seed)
        self.train_cities = {"current_time": [c[0] for c in CITIES if c[0] not in self.split.time_cities],
                             "weather": [c[0] for c in CITIES if c[0] not in self.split.weather_cities]}

    def train(self, rng: random.Random, tool: str | None = None, lang: str | None = None) -> ToolTask:
        from .synth import _lang

        tool = tool or rng.choices(list(TOOL_WEIGHTS), list(TOOL_WEIGHTS.values()))[0]
        lang = lang or _lang(rng)
        if tool == "calculator":
            big = rng.random() < 0.2
            return calculator_task(rng, lang, None if big else self.g.mul_pair(rng), big)
        if tool == "lookup":
            if self.INVENTED_SHARE and rng.random() < self.INVENTED_SHARE:  # no draw at 0: the corpus stays as it was
                from .synth import Fact, RELATIONS, fact_table

                subject = invented.invent(rng, rng.choice(invented.TABLES))
                rel = rng.choice([r for r in RELATIONS if r.table == subject.table])
                return lookup_task(rng, lang, Fact(rel, subject), Encyclopedia(fact_table([subject])))
            fact = self.g.train_fact(rng)
            if self.SUBSTITUTED_SHARE and rng.random() < self.SUBSTITUTED_SHARE:  # no draw at 0, as above
                from .synth import Fact, fact_table

                pool = [s for s in self.g.subjects if Fact(fact.rel, s).id not in self.g.split.facts]
                fact = invented.swap_answer(rng, fact, pool)
                return lookup_task(rng, lang, fact, Encyclopedia(fact_table([fact.subj])))
            return lookup_task(rng, lang, fact)
        if tool == "unit_converter":
            return unit_task(rng, lang, self._fresh(rng, self.split.unit, self._unit_key))
        if tool == "exchange_rate":
            return fx_task(rng, lang, self._fresh(rng, self.split.fx, self._fx_key))
        city = rng.choice(self.train_cities[tool])
        task = time_task if tool == "current_time" else weather_task
        if self.CLOCK_SHARE and rng.random() < self.CLOCK_SHARE:  # any minute of 2025
            instant = _YEAR_START + timedelta(days=rng.randrange(365), minutes=rng.randrange(24 * 60))
            with mocks.at(instant.isoformat()):
                return task(rng, lang, city)
        return task(rng, lang, city)

    @staticmethod
    def _fresh(rng: random.Random, held: set, draw) -> tuple:
        while True:
            key = draw(rng)
            if key not in held:
                return key

    @staticmethod
    def _unit_key(rng: random.Random) -> tuple[int, int]:
        k = rng.randrange(len(UNIT_PAIRS))
        return k, rng.randint(*UNIT_PAIRS[k][4])

    @staticmethod
    def _fx_key(rng: random.Random) -> tuple[int, int, int]:
        a, b = rng.sample(range(len(CURRENCIES)), 2)
        return a, b, rng.choice([rng.randint(1, 100), rng.randint(1, 20) * 50])

    def split_manifest(self) -> dict:
        s = self.split
        return {"unit": [[UNIT_PAIRS[k][0], UNIT_PAIRS[k][1], v] for k, v in sorted(s.unit)],
                "time_cities": sorted(s.time_cities), "weather_cities": sorted(s.weather_cities),
                "exchange": [[CURRENCIES[a][0], CURRENCIES[b][0], n] for a, b, n in sorted(s.fx)]}

    def heldout(self, rng: random.Random) -> list[ToolTask]:
        """Every held-out task, in a fixed order: one per key (two languages for facts and cities)."""
        from .synth import _lang, _unmatchable

        g, s = self.g, self.split
        out = [calculator_task(rng, _lang(rng), pair) for pair in sorted(g.split.mul_pairs)]
        out += [lookup_task(rng, lang, f) for f in g.held_facts for lang in ("en", "zh")
                if not _unmatchable(g, f, lang)]
        out += [unit_task(rng, _lang(rng), key) for key in sorted(s.unit)]
        out += [time_task(rng, lang, c) for c in sorted(s.time_cities) for lang in ("en", "zh")]
        out += [weather_task(rng, lang, c) for c in sorted(s.weather_cities) for lang in ("en", "zh")]
        out += [fx_task(rng, _lang(rng), key) for key in sorted(s.fx)]
        return out


# ============================================================================ conversations

def offered_tools(rng: random.Random, needed: str | None, exclude: str | None = None) -> list[str]:
    """The needed tool and up to two others (none half the time: schemas are long for a small context),
    shuffled; with needed None, one to three tools but not `exclude`."""
    others = [t for t in TOOL_NAMES if t not in (needed, exclude)]
    names = ([needed] if needed else []) + rng.sample(others, rng.choices([0, 1, 2], [5, 4, 1])[0] + (not needed))
    rng.shuffle(names)
    return names


def tool_system(lang: str, names: list[str]) -> dict:
    """The system message offering `names` (the public format: a JSON string in its "tools" field)."""
    return {"role": "system", "content": TOOL_SYSTEM[lang == "zh"],
            "tools": json.dumps(toolset.schemas(names), ensure_ascii=False)}


def _reasoning(tasks: list[ToolTask]) -> str:
    names = ", ".join(dict.fromkeys(t.tool for t in tasks))
    return (f"This needs the {names} tool; I will call it and then state its result." if tasks[0].lang == "en"
            else f"这个问题需要调用{names}工具，然后说出它的结果。")


def tool_convo(rng: random.Random, tasks: list[ToolTask], think: bool = False) -> list[dict]:
    """system(tools) -> user -> assistant(tool_calls: one per task) -> tool results -> assistant(answer)."""
    lang = tasks[0].lang
    names = offered_tools(rng, tasks[0].tool)
    names += [t.tool for t in tasks if t.tool not in names]
    question = (" " if lang == "en" else "").join(t.question for t in tasks)
    calls = json.dumps([t.call for t in tasks], ensure_ascii=False)
    call_msg = {"role": "assistant", "content": "", "tool_calls": calls}
    if think:
        call_msg["reasoning_content"] = _reasoning(tasks)
    answer = (" " if lang == "en" else "").join(t.answer for t in tasks)
    return [tool_system(lang, names), {"role": "user", "content": question}, call_msg,
            *({"role": "tool", "content": t.result} for t in tasks), {"role": "assistant", "content": answer}]


def prompt_convo(rng: random.Random, task: ToolTask) -> list[dict]:
    """The conversation up to the question (for held-out evaluation and RL prompts)."""
    return [tool_system(task.lang, offered_tools(rng, task.tool)), {"role": "user", "content": task.question}]


def direct_answer(rng: random.Random, lang: str, qa: list[dict], needed: str | None) -> list[dict]:
    """A question the offered tools cannot answer, answered directly (`needed`: the tool it would need)."""
    return [tool_system(lang, offered_tools(rng, None, exclude=needed))] + qa


def heldout_records(tasks: list[ToolTask], rng: random.Random) -> list[dict]:
    return [{"family": "tool", "tool": t.tool, "lang": t.lang, "conversations": prompt_convo(rng, t),
             "answer": t.gt, "call": t.call} for t in tasks]


def agent_rl_records(tt: ToolTasks, rng: random.Random, n: int) -> list[tuple[str, dict]]:
    out = []
    for _ in range(n):
        t = tt.train(rng)
        out.append((f"tool_{t.tool}", {"conversations": prompt_convo(rng, t), "gt": t.gt, "tool": t.tool}))
    return out
