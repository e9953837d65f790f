"""The tool set: each tool's results, hostile inputs, validation, limits, user tools, old import path."""

import json
import random
import threading

import pytest

from minimind import tools
from minimind.data.synth import RELATIONS, _facts, _subjects, fact_table
from minimind.errors import UserError
from minimind.tools import ToolRegistry, default_registry
from minimind.data.invented import TABLES, invent
from minimind.tools import mocks
from minimind.tools.lookup import RELATION_ZH, Encyclopedia
from minimind.tools.mocks import CITIES, DEFAULT_NOW, NOW_ENV, RATES, city_weather

BUILTIN_NAMES = ["calculator", "unit_converter", "lookup", "current_time", "weather", "exchange_rate"]


@pytest.fixture(autouse=True)
def generous_default_limit(monkeypatch):
    """Tests that use the default registry check results, not timing: no 5 s limit to race on a busy host."""
    monkeypatch.setattr(tools.REGISTRY, "time_limit", 120)


@pytest.fixture(scope="module")
def reg():
    """The built-in tools under a generous time limit: these tests are about results, not about timing."""
    return default_registry(time_limit=120)


def run(reg, name, **arguments):
    return reg.execute({"name": name, "arguments": arguments})


# ---------------------------------------------------------------------------- calculator

@pytest.mark.parametrize("expr,want", [
    ("37*59", "2183"), ("(2+3)*4/2", "10"), ("7/2", "3.5"), ("1/3", "0.333333"), ("2/3", "0.666667"),
    ("-3+5", "2"), ("-(2.5*4)", "-10"), ("+4", "4"), ("2**10", "1024"), ("2^0.5", "1.414214"),
    ("12×3", "36"), ("12x3", "36"), ("10÷4", "2.5"), ("（1+2）*3", "9"), ("0.1+0.2", "0.3"),
    ("1.5e3", "1500"), ("1e-9", "1e-09"), ("3*4 =", "12"), ("2**-1", "0.5"), ("−5+1", "-4"),
    ("123456789*987654321", "121932631112635269"), ("2**332", str(2 ** 332)),
    ("1+" * 249 + "1", "250"), ("-" * 100 + "7", "7"), ("(" * 50 + "6" + ")" * 50, "6"),
])
def test_calculator_results(reg, expr, want):
    assert tools.calculator(expr) == want
    assert run(reg, "calculator", expression=expr) == want


@pytest.mark.parametrize("expr,why", [
    ("9**9**9", "result too large"),            # 9**387420489: refused before computing, not cut off
    ("2**100000", "result too large"),
    ("(10**99)**(10**99)", "result too large"),
    ("10**101", "result too large"),
    ("10**100*10", "number too large"),
    ("1e999", "number too large"),
    ("9" * 120, "number too large"),
    ("(-8)**(1/3)", "not a real number"),
    ("1/0", "division by zero"),
    ("0**-1", "division by zero"),
    ("(" * 10000 + "1" + ")" * 10000, "expression too long"),
    ("1+" * 300000 + "1", "expression too long"),
    ("(" * 60 + "1" + ")" * 60, "nested more than 50 deep"),
    ("__import__('os').system('x')", "only numbers"),
    ("1; import os", "not an arithmetic expression"),
    ("open('x')", "only numbers"),
    ("a+1", "only numbers"),
    ("(lambda: 1)()", "only numbers"),
    ("[1, 2]", "only numbers"),
    ("'a'*3", "only numbers"),
    ("1 if 1 else 2", "only numbers"),
    ("True+1", "only numbers"),
    ("1j", "only numbers"),
    ("2 % 3", "only numbers"),
    ("1\x00", "not an arithmetic expression"),
    ("", "empty expression"),
])
def test_calculator_refuses(reg, expr, why):
    out = run(reg, "calculator", expression=expr)
    assert out.startswith("error: calculator: ") and why in out, out
    assert len(out) <= 300  # the error does not echo a huge input
    with pytest.raises(ValueError, match=why):  # the bare function raises a ValueError (ToolError)
        tools.calculator(expr)


def test_calculator_never_runs_model_text(reg, tmp_path):
    target = tmp_path / "pwned"
    for expr in [f"__import__('pathlib').Path({str(target)!r}).touch()",
                 f"1; open({str(target)!r}, 'w')",
                 f"[c for c in ().__class__.__base__.__subclasses__()]"]:
        assert run(reg, "calculator", expression=expr).startswith("error: calculator:")
    assert not target.exists()


# ---------------------------------------------------------------------------- unit_converter

@pytest.mark.parametrize("value,a,b,want", [
    (10, "km", "mi", "10 km = 6.213712 mi"), (1, "mile", "km", "1 mile = 1.609344 km"),
    (100, "°F", "°C", "100 °F = 37.777778 °C"), (-40, "C", "F", "-40 C = -40 F"),
    (0, "摄氏度", "华氏度", "0 摄氏度 = 32 华氏度"), (300, "K", "celsius", "300 K = 26.85 celsius"),
    (0, "℃", "K", "0 ℃ = 273.15 K"), (2, "斤", "kg", "2 斤 = 1 kg"), (5, "pounds", "kg", "5 pounds = 2.267962 kg"),
    (90, "minutes", "h", "90 minutes = 1.5 h"), (1, "week", "hours", "1 week = 168 hours"),
    (3, "gallons", "L", "3 gallons = 11.356235 L"), (250, "mL", "cup", "250 mL = 1.056688 cup"),
    (100, "km/h", "m/s", "100 km/h = 27.777778 m/s"), (60, "mph", "公里每小时", "60 mph = 96.56064 公里每小时"),
    (1.5, " Kilometres ", "METERS", "1.5 Kilometres = 1500 METERS"), (1, "mm", "km", "1 mm = 1e-06 km"),
])
def test_unit_converter_results(reg, value, a, b, want):
    assert run(reg, "unit_converter", value=value, from_unit=a, to_unit=b) == want


def test_unit_converter_errors(reg):
    out = run(reg, "unit_converter", value=5, from_unit="parsec", to_unit="m")
    assert out.startswith("error: unit_converter: unknown unit 'parsec'")
    assert "Known unit names: m, km, cm" in out and "°C" in out and "gal" in out  # the known units, listed
    out = run(reg, "unit_converter", value=1, from_unit="kilometerz", to_unit="m")
    assert "did you mean 'kilometer'" in out
    assert "cannot convert mass (kg) to length (m)" in run(reg, "unit_converter", value=5, from_unit="kg", to_unit="m")
    assert "below absolute zero" in run(reg, "unit_converter", value=-300, from_unit="C", to_unit="K")
    assert "must be a number, got string" in run(reg, "unit_converter", value="ten", from_unit="km", to_unit="m")
    assert "unit too long" in run(reg, "unit_converter", value=1, from_unit="k" * 10**6, to_unit="m")
    assert "within ±1e100" in run(reg, "unit_converter", value=1e300, from_unit="km", to_unit="m")
    assert "within ±1e100" in run(reg, "unit_converter", value=float("nan"), from_unit="km", to_unit="m")
    out = reg.execute({"name": "unit_converter", "arguments": '{"value": NaN, "from_unit": "km", "to_unit": "m"}'})
    assert out.startswith("error: unit_converter: arguments are not valid JSON (NaN is not a JSON number)")


# ---------------------------------------------------------------------------- lookup

@pytest.mark.parametrize("subject,relation,want", [
    ("France", "capital", "France, capital: Paris"), ("法国", "capital", "法国，首都：巴黎"),
    ("the united states", "Capital", "the United States, capital: Washington"),
    (" UNITED  STATES ", "continent", "the United States, continent: North America"),
    ("Jupiter", "moons", "Jupiter, moons: 95"), ("Mercury", "moons", "Mercury, moons: 0"),
    ("Saturn", "planet order", "Saturn, planet order: sixth"), ("金", "atomic_number", "金，原子序数：79"),
    ("hydrogen", "Atomic Number", "hydrogen, atomic number: 1"), ("gold", "symbol", "gold, symbol: Au"),
    ("the telephone", "inventor", "the telephone, inventor: Alexander Graham Bell"),
    ("电话", "inventor", "电话，发明者：贝尔"), ("snake", "legs", "snake, legs: 0"), ("熊猫", "diet", "熊猫，食性：食草动物"),
    ("Dolphin", "animal_class", "dolphin, animal class: mammal"),
])
def test_lookup_results(reg, subject, relation, want):
    assert run(reg, "lookup", subject=subject, relation=relation) == want


def _value(result: str) -> str:
    """The value a lookup result ends with, after "relation: " or "关系："."""
    return result.split("：")[-1] if "：" in result else result.split(": ", 1)[1]


def test_lookup_answers_every_fact_of_the_corpus(reg):
    facts = _facts(_subjects())
    assert len(facts) > 300
    for f in facts:
        en, zh = tools.lookup(f.subj.name, f.rel.name), tools.lookup(f.subj.zh, f.rel.name)
        assert _value(en) == f.short("en") and en.endswith(" " + f.short("en")), f.id
        assert zh == f"{f.subj.zh}，{RELATION_ZH[f.rel.name]}：{f.short('zh')}", f.id
    rows = fact_table()  # also the zero counts the corpus states as "has no moons"/"has no legs"
    assert len(rows) > len(facts) and all(_value(tools.lookup(r["subject"], r["relation"])) == r["answer"]
                                          for r in rows)


def test_lookup_errors(reg):
    out = run(reg, "lookup", subject="Frence", relation="capital")
    assert out.startswith("error: lookup: unknown subject 'Frence'; did you mean 'France'")
    out = run(reg, "lookup", subject="Atlantis", relation="capital")
    assert "unknown subject 'Atlantis'." in out and "countries, planets" in out
    out = run(reg, "lookup", subject="France", relation="captial")
    assert "unknown relation 'captial'; did you mean 'capital'?" in out
    assert "Known relation names: " + ", ".join(r.name for r in RELATIONS) in out
    out = run(reg, "lookup", subject="France", relation="moons")
    assert "'moons' is not a relation of France" in out and "ask for capital, continent" in out
    assert "missing required argument 'relation'" in run(reg, "lookup", subject="France")
    assert "subject too long" in run(reg, "lookup", subject="x" * 100_000, relation="capital")


# ---------------------------------------------------------------------------- the mocks

def test_current_time_is_a_fixed_clock(reg, monkeypatch):
    monkeypatch.delenv(NOW_ENV, raising=False)
    assert DEFAULT_NOW == "2025-05-20T08:30:00Z"
    assert run(reg, "current_time") == "Tuesday 2025-05-20 08:30 in UTC (UTC+00:00) [mock clock]"
    assert run(reg, "current_time", timezone="beijing") == \
        "Tuesday 2025-05-20 16:30 in Beijing (UTC+08:00) [mock clock]"
    assert run(reg, "current_time", timezone="北京") == "北京：2025年5月20日 星期二 16:30（UTC+08:00）[模拟时钟]"
    assert run(reg, "current_time", timezone="New York").endswith(  # daylight saving time in May
        "04:30 in New York (UTC-04:00) [mock clock]")
    assert run(reg, "current_time", timezone="Asia/Kathmandu").endswith(
        "14:15 in Asia/Kathmandu (UTC+05:45) [mock clock]")
    assert "14:00 in UTC+5:30 (UTC+05:30)" in run(reg, "current_time", timezone="UTC+5:30")
    monkeypatch.setenv(NOW_ENV, "2024-12-31T23:59:00Z")
    assert run(reg, "current_time", timezone="Tokyo") == \
        "Wednesday 2025-01-01 08:59 in Tokyo (UTC+09:00) [mock clock]"
    assert "(UTC-05:00)" in run(reg, "current_time", timezone="New York")  # no DST in winter
    monkeypatch.setenv(NOW_ENV, "yesterday")
    out = run(reg, "current_time", timezone="Tokyo")
    assert out.startswith("error: current_time: $MINIMIND_MOCK_NOW='yesterday' is not an ISO 8601 time")


def test_current_time_errors(reg):
    assert "unknown city 'Pariss'; did you mean 'Paris'?" in run(reg, "current_time", timezone="Pariss")
    assert "unknown city '../../etc/passwd'" in run(reg, "current_time", timezone="../../etc/passwd")
    assert "out of range" in run(reg, "current_time", timezone="UTC+15")
    assert "time zone too long" in run(reg, "current_time", timezone="A" * 10**6)


def test_weather_is_a_fixed_table(reg):
    w = city_weather("Paris")
    out = run(reg, "weather", city="paris")
    assert out == (f"Paris: {w['condition'][0]}, {w['celsius']} °C, humidity {w['humidity']}%, "
                   f"wind {w['wind_kmh']} km/h [mock weather]")
    assert run(reg, "weather", city="paris") == out  # the same answer every time
    fahrenheit = run(reg, "weather", city="Paris", unit="fahrenheit")
    assert f"{tools.format_number(w['celsius'] * 9 / 5 + 32)} °F" in fahrenheit
    in_chinese = run(reg, "weather", city="巴黎")
    assert in_chinese.startswith(f"巴黎：{w['condition'][1]}，") and in_chinese.endswith("[模拟天气]")
    for en, zh, _ in CITIES:  # every city answers in both languages, with a plausible reading
        w = city_weather(en)
        assert -5 <= w["celsius"] <= 31 and 30 <= w["humidity"] <= 90 and 0 <= w["wind_kmh"] <= 30
        assert w["condition"][0] != "snowy" or w["celsius"] <= 0
        assert run(reg, "weather", city=zh).startswith(zh + "：")
    assert "did you mean 'London'?" in run(reg, "weather", city="Londn")
    assert "must be one of 'celsius', 'fahrenheit'; got 'kelvin'" in run(reg, "weather", city="Paris", unit="kelvin")


def test_the_mock_clock_can_be_set_for_a_block_and_moves_the_weather(reg, monkeypatch):
    monkeypatch.delenv(NOW_ENV, raising=False)
    before = [run(reg, "weather", city=en) for en, _, _ in CITIES] + [run(reg, "current_time", timezone="Paris")]
    with mocks.at("2025-03-02T23:10Z"):  # the registry runs tools in a worker thread: the clock holds there too
        assert run(reg, "current_time", timezone="Paris") == "Monday 2025-03-03 00:10 in Paris (UTC+01:00) [mock clock]"
        other_day = [run(reg, "weather", city=en) for en, _, _ in CITIES]
        assert [run(reg, "weather", city=en) for en, _, _ in CITIES] == other_day  # fixed for that day
    changed = sum(a != b for a, b in zip(before, other_day))
    assert changed > len(CITIES) * 3 // 4, changed  # another day, another draw for (almost) every city
    with mocks.at("2025-05-20T23:59Z"):  # DEFAULT_NOW's day in UTC: the built-in weather
        assert [run(reg, "weather", city=en) for en, _, _ in CITIES] == before[:-1]
    assert [run(reg, "weather", city=en) for en, _, _ in CITIES] + \
        [run(reg, "current_time", timezone="Paris")] == before  # back to the default clock after the block
    with mocks.at("yesterday"):  # a bad instant is an error result that names where it came from
        assert run(reg, "weather", city="Paris") == \
            "error: weather: mocks.at='yesterday' is not an ISO 8601 time such as 2025-05-20T08:30:00Z"


def test_an_encyclopedia_of_invented_subjects(reg):
    rng = random.Random(0)
    real = {s.name.lower() for s in _subjects()} | {s.zh for s in _subjects()}
    seen = set()
    for i in range(200):
        subject = invent(rng, TABLES[i % len(TABLES)])
        assert subject.name.lower() not in real and subject.zh not in real
        seen.add(subject.name)
        book = Encyclopedia(fact_table([subject]))
        facts = _facts([subject])
        assert facts and {f.rel.table for f in facts} == {subject.table}
        for f in facts:
            for lang, name in (("en", subject.name), ("zh", subject.zh)):
                assert _value(book(name, f.rel.name)) == f.short(lang)
                assert f.short(lang) in f.answer_sentence(lang) and name in f.question(lang, rng)
            assert run(reg, "lookup", subject=subject.name, relation=f.rel.name).startswith(
                "error: lookup: unknown subject")  # the built-in tool does not know it
    assert len(seen) > 150  # fresh names, not a small list
    with pytest.raises(ValueError, match="no invented subjects for table 'planet'"):
        invent(rng, "planet")


def test_exchange_rate_is_a_fixed_table(reg):
    assert run(reg, "exchange_rate", base="USD", quote="CNY", amount=100) == \
        "100 USD = 720 CNY (1 USD = 7.2 CNY) [mock rates]"
    assert run(reg, "exchange_rate", base="euro", quote="yen") == \
        "1 EUR = 163.043478 JPY (1 EUR = 163.043478 JPY) [mock rates]"
    assert run(reg, "exchange_rate", base="人民币", quote="美元", amount=72).startswith("72 CNY = 10 USD")
    assert run(reg, "exchange_rate", base="人民币", quote="美元").endswith("[模拟汇率]")
    out = run(reg, "exchange_rate", base="XYZ", quote="USD")
    assert "unknown currency 'XYZ'." in out and "Known currency names: " + ", ".join(RATES) in out
    assert "amount must be between 0 and 1e15, not -5" in run(reg, "exchange_rate", base="USD", quote="EUR", amount=-5)
    assert "between 0 and 1e15" in run(reg, "exchange_rate", base="USD", quote="EUR", amount=1e300)


def test_mocks_say_they_are_mocks():
    for s in tools.schemas(["current_time", "weather", "exchange_rate"]):
        assert s["function"]["description"].startswith("MOCK")
    for s in tools.schemas(["calculator", "unit_converter", "lookup"]):
        assert "MOCK" not in s["function"]["description"]


# ---------------------------------------------------------------------------- schemas

def test_schemas_are_openai_tools():
    from jsonschema import Draft202012Validator

    all_schemas = tools.schemas()
    assert [s["function"]["name"] for s in all_schemas] == BUILTIN_NAMES
    for s in all_schemas:
        assert s["type"] == "function" and set(s["function"]) == {"name", "description", "parameters"}
        Draft202012Validator.check_schema(s["function"]["parameters"])
        assert not any(ch.isdigit() for ch in json.dumps(s, ensure_ascii=False)), s  # digits in a schema
        # repeated in every tool conversation would leak numbers into answers
    assert tools.schemas(["lookup"]) == [all_schemas[2]]
    tools.schemas()[0]["function"]["name"] = "changed"  # a copy: the registry is untouched
    assert tools.schemas()[0]["function"]["name"] == "calculator"
    with pytest.raises(UserError, match="unknown tool 'search'"):
        tools.schemas(["search"])


def test_schemas_render_in_the_chat_template():
    from minimind.tokenizer import render_chat_text

    text, _ = render_chat_text([{"role": "user", "content": "hi"}], tools=tools.schemas(), add_generation_prompt=True)
    assert text.count('{"name": "') == len(BUILTIN_NAMES) and '"name": "lookup"' in text


def test_a_parsed_model_reply_executes():
    from minimind.infer.parse import parse_assistant

    text = ('<tool_call>\n{"name": "lookup", "arguments": {"subject": "Japan", "relation": "capital"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "calculator", "arguments": {"expression": "6*7"}}\n</tool_call>')
    calls = parse_assistant(text)["tool_calls"]
    assert [tools.execute(c) for c in calls] == ["Japan, capital: Tokyo", "42"]


# ---------------------------------------------------------------------------- validation of calls

@pytest.mark.parametrize("call,want", [
    ({"name": "search", "arguments": {}}, "error: unknown tool 'search'; available tools: calculator, unit_converter"),
    ({"name": "calculator"}, "error: calculator: missing required argument 'expression'"),
    ({"name": "calculator", "arguments": None}, "error: calculator: missing required argument 'expression'"),
    ({"name": "calculator", "arguments": ""}, "error: calculator: missing required argument 'expression'"),
    ({"name": "calculator", "arguments": {"expression": 6}},
     "error: calculator: argument 'expression' must be a string, got integer 6"),
    ({"name": "calculator", "arguments": {"expression": ["6*7"]}},
     "error: calculator: argument 'expression' must be a string, got array ['6*7']"),
    ({"name": "calculator", "arguments": {"expression": None}},
     "error: calculator: argument 'expression' must be a string, got null None"),
    ({"name": "calculator", "arguments": {"expr": "6*7"}},
     "error: calculator: unexpected argument 'expr' (calculator takes expression)"),
    ({"name": "calculator", "arguments": {"expression": "1", "code": "import os"}},
     "error: calculator: unexpected argument 'code' (calculator takes expression)"),
    ({"name": "calculator", "arguments": [1, 2]}, "error: calculator: arguments must be a JSON object, got array"),
    ({"name": "calculator", "arguments": 42}, "error: calculator: arguments must be a JSON object, got integer"),
    ({"name": "calculator", "arguments": True}, "error: calculator: arguments must be a JSON object, got boolean"),
    ({"name": "calculator", "arguments": "42"}, "error: calculator: arguments must be a JSON object, got integer"),
    ({"name": "calculator", "arguments": '{"expression": '}, "error: calculator: arguments are not valid JSON"),
    ({"name": "calculator", "arguments": "[" * 100_000 + "]" * 100_000},
     "error: calculator: arguments are nested too deeply"),
    ({"name": "unit_converter", "arguments": {"value": True, "from_unit": "m", "to_unit": "km"}},
     "error: unit_converter: argument 'value' must be a number, got boolean True"),
    ({"name": 42, "arguments": {}}, "error: a tool name is a string, got integer 42"),
    ({"arguments": {"expression": "1"}}, 'error: a tool call is an object {"name": ..., "arguments": {...}}, got {'),
    ("calculator(6*7)", "error: a tool call is an object"),
    (None, "error: a tool call is an object"),
    (["calculator", {"expression": "1"}], "error: a tool call is an object"),
])
def test_bad_calls_are_error_results(reg, call, want):
    out = reg.execute(call)
    assert out.startswith(want), out
    assert reg.check(call) == out  # check() says the same without executing


def test_arguments_as_json_string_and_openai_form(reg):
    assert reg.execute({"name": "calculator", "arguments": '{"expression": "6*7"}'}) == "42"
    call = {"id": "call_1", "type": "function",
            "function": {"name": "lookup", "arguments": '{"subject": "Egypt", "relation": "capital"}'}}
    assert reg.execute_openai(call) == "Egypt, capital: Cairo" == tools.execute_openai(call)
    assert reg.check(call) is None


def test_openai_client_objects():
    types = pytest.importorskip("openai.types.chat")
    call = types.ChatCompletionMessageToolCall(
        id="call_1", type="function",
        function={"name": "unit_converter", "arguments": '{"value": 3, "from_unit": "ft", "to_unit": "in"}'})
    assert tools.execute_openai(call) == "3 ft = 36 in"


def test_offered_tools_only(reg):
    call = {"name": "weather", "arguments": {"city": "Paris"}}
    out = reg.execute(call, offered=["calculator", "lookup"])
    assert out == "error: unknown tool 'weather'; available tools: calculator, lookup"
    assert reg.execute(call, offered=["weather"]).startswith("Paris:")


def test_extremely_long_strings_are_refused_briefly(reg):
    huge = "9" * 2_000_000
    for call in [{"name": huge, "arguments": {}},
                 {"name": "calculator", "arguments": {"expression": huge}},
                 {"name": "calculator", "arguments": json.dumps({"expression": huge})},
                 {"name": "calculator", "arguments": {"expression": "1", huge: 1}},
                 {"name": "weather", "arguments": {"city": huge}},
                 {"name": "lookup", "arguments": {"subject": "France", "relation": huge}}]:
        out = reg.execute(call)
        assert out.startswith("error: ") and len(out) < 400, out[:200]


# ---------------------------------------------------------------------------- user tools, limits

def test_user_tools_by_decorator_and_register():
    reg = ToolRegistry(time_limit=120)

    @reg.tool("Reverse a text.", {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})
    def reverse(text):
        return text[::-1]

    reg.register("add", lambda a, b: a + b, {"type": "function", "function": {
        "name": "add", "description": "Add two numbers.",
        "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                       "required": ["a", "b"]}}})
    reg.register("info", lambda: {"version": 1, "tools": ["add"]}, {"type": "object", "properties": {}})
    reg.register("level", lambda level: level * 2,
                 {"name": "level", "description": "Pick a level.",
                  "parameters": {"type": "object", "properties": {"level": {"type": "integer", "enum": [1, 2, 3]}}}})
    assert reg.names() == ["reverse", "add", "info", "level"]
    assert reg.execute({"name": "reverse", "arguments": {"text": "abc"}}) == "cba"
    assert reg.execute({"name": "add", "arguments": '{"a": 0.1, "b": 0.2}'}) == "0.3"  # numbers are formatted
    assert reg.execute({"name": "info", "arguments": {}}) == '{"version": 1, "tools": ["add"]}'
    assert reg.execute({"name": "level", "arguments": {"level": 3}}) == "6"
    assert reg.execute({"name": "level", "arguments": {"level": 4}}) == \
        "error: level: argument 'level' must be one of 1, 2, 3; got 4"
    assert reg.execute({"name": "add", "arguments": {"a": 1}}) == "error: add: missing required argument 'b'"
    assert reg.schemas(["add"])[0]["function"]["description"] == "Add two numbers."
    assert reg.schemas(["info"])[0] == {"type": "function", "function": {
        "name": "info", "description": "", "parameters": {"type": "object", "properties": {}}}}
    reg.unregister("reverse")
    assert reg.execute({"name": "reverse", "arguments": {"text": "abc"}}).startswith("error: unknown tool 'reverse'")


def test_bad_tool_definitions_raise_at_registration():
    reg = ToolRegistry()
    reg.register("a", lambda: "x")
    with pytest.raises(UserError, match="already registered"):
        reg.register("a", lambda: "y")
    reg.register("a", lambda: "y", replace=True)
    assert reg.execute({"name": "a"}) == "y"
    with pytest.raises(UserError, match="tool name 'two words'"):
        reg.register("two words", lambda: "")
    with pytest.raises(UserError, match="not callable"):
        reg.register("b", "not a function")
    with pytest.raises(UserError, match="the schema names it 'other'"):
        reg.register("b", lambda: "", {"name": "other"})
    with pytest.raises(UserError, match='"parameters" must be a JSON Schema with "type": "object"'):
        reg.register("b", lambda: "", {"name": "b", "parameters": {"type": "string"}})
    with pytest.raises(UserError, match="not a valid JSON Schema"):
        reg.register("b", lambda x: "", {"type": "object", "properties": {"x": {"type": "float"}}})
    with pytest.raises(UserError, match="max_chars must be at least"):
        ToolRegistry(max_chars=10)
    with pytest.raises(UserError, match="time_limit must be a positive number"):
        reg.register("c", lambda: "", time_limit=0)


def test_a_failing_tool_is_an_error_result():
    reg = ToolRegistry(time_limit=120)
    reg.register("refuse", lambda: (_ for _ in ()).throw(ValueError("no such thing")))
    reg.register("buggy", lambda: {}["key"])
    reg.register("exits", lambda: (_ for _ in ()).throw(SystemExit(3)))
    reg.register("wrong_signature", lambda x: x, {"type": "object", "properties": {"y": {"type": "string"}}})
    assert reg.execute({"name": "refuse"}) == "error: refuse: no such thing"
    assert reg.execute({"name": "buggy"}) == "error: buggy failed: KeyError: 'key'"
    assert reg.execute({"name": "exits"}) == "error: exits failed: SystemExit: 3"
    out = reg.execute({"name": "wrong_signature", "arguments": {"y": "1"}})
    assert out.startswith("error: wrong_signature failed: TypeError:") and "'y'" in out


def test_output_is_truncated_with_a_marker():
    reg = ToolRegistry(time_limit=120, max_chars=100)
    reg.register("long", lambda n: "ab" * n, {"type": "object", "properties": {"n": {"type": "integer"}}})
    reg.register("long_ok", lambda n: "ab" * n, {"type": "object", "properties": {"n": {"type": "integer"}}},
                 max_chars=5000)
    assert reg.execute({"name": "long", "arguments": {"n": 50}}) == "ab" * 50  # exactly the limit: untouched
    out = reg.execute({"name": "long", "arguments": {"n": 2500}})
    assert len(out) == 100 and out.startswith("abab") and out.endswith(" ...[truncated: 5000 characters in all]")
    assert reg.execute({"name": "long_ok", "arguments": {"n": 2500}}) == "ab" * 2500  # its own, larger limit
    out = reg.execute({"name": "nope" * 10, "arguments": {}})  # errors obey the limit too
    assert len(out) <= 100


def test_builtin_outputs_are_bounded_by_the_default_limit():
    out = tools.execute({"name": "calculator", "arguments": {"expression": "10**100"}})
    assert out == "1" + "0" * 100 and len(out) <= tools.DEFAULT_MAX_CHARS


def test_time_limit_cuts_off_a_blocked_tool():
    """A tool waiting on an Event nobody sets: the call is answered with the time-limit error."""
    never = threading.Event()
    calls = []
    reg = ToolRegistry(time_limit=0.05, max_stuck=2)

    @reg.tool("Wait forever.")
    def slow():
        calls.append(1)
        never.wait()
        return "finished"

    try:
        assert reg.execute({"name": "slow"}) == "error: slow: no result within the time limit of 0.05 s"
        assert reg.execute({"name": "slow"}) == "error: slow: no result within the time limit of 0.05 s"
        assert reg.running_past_limit("slow") == 2
        # two calls are still stuck: a third is refused instead of piling up threads
        assert reg.execute({"name": "slow"}) == \
            "error: slow is unavailable: 2 earlier calls are still running past the time limit"
        assert len(calls) == 2
    finally:
        never.set()
    for t in threading.enumerate():  # wait for the released threads themselves, not for a clock
        if t.name == "tool:slow":
            t.join()
    assert reg.running_past_limit("slow") == 0
    reg.register("slow", slow, {"description": "Wait forever."}, time_limit=120, replace=True)
    assert reg.execute({"name": "slow"}) == "finished"


def test_default_registry_user_tools_and_old_import_path():
    from minimind.infer import tools as old

    assert old.run_tool_call is tools.run_tool_call is tools.execute and old.calculator is tools.calculator
    assert old.run_tool_call({"name": "calculator", "arguments": {"expression": "37*59"}}) == "2183"

    @tools.tool("Count the letters of a word.", {"type": "object", "properties": {"word": {"type": "string"}},
                                                  "required": ["word"]})
    def letters(word):
        return len(word)

    try:
        assert "letters" in tools.REGISTRY and tools.schemas()[-1]["function"]["name"] == "letters"
        assert old.run_tool_call({"name": "letters", "arguments": {"word": "minimind"}}) == "8"
    finally:
        tools.unregister("letters")
    assert "letters" not in tools.REGISTRY and [s["function"]["name"] for s in tools.schemas()] == BUILTIN_NAMES


def test_concurrent_calls_get_their_own_results(reg):
    results = {}

    def worker(i):
        results[i] = [reg.execute({"name": "calculator", "arguments": {"expression": f"{i}*{j}"}}) for j in range(20)]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [str(i * j) for j in range(20)] for i in range(8)}
