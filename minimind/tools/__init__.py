"""The tool set: small functions with OpenAI-style JSON schemas that a model may call, run safely.

A model writes `<tool_call>{"name": "calculator", "arguments": {"expression": "37*59"}}</tool_call>`;
`execute(call)` returns the text of the `tool` message that answers it ("2183"). Nothing a model
writes is ever passed to `eval`/`exec`.

    from minimind import tools
    tools.schemas()                      # the OpenAI `tools` list, for a system message or a request
    tools.schemas(["calculator"])        # just some of them
    tools.execute({"name": "lookup", "arguments": {"subject": "France", "relation": "capital"}})  # "France, capital: Paris"
    tools.execute({"name": "calculator", "arguments": '{"expression": "1/0"}'})  # "error: calculator: ..."
    tools.execute_openai(tool_call)      # {"id", "type": "function", "function": {"name", "arguments"}}
    tools.check(call)                    # None if the call is valid, else the error text (no execution)

Built-in tools (real ones first, then the mocks):

    calculator(expression)               + - * / ** ( ), unary minus, decimals; exact integers, floats to
                                         6 decimals; bounded: at most 500 characters, 50 nested
                                         parentheses, numbers within ±1e100 (9**9**9 is refused at once)
    unit_converter(value, from_unit, to_unit)
                                         length, mass, time, volume, speed, temperature; symbols, English
                                         and Chinese names ("km", "miles", "公斤"); unknown unit -> the list
    lookup(subject, relation)            the built-in corpus's fact tables: capital/continent of a
                                         country, planet_order/moons of a planet, symbol/atomic_number of
                                         an element, animal_class/diet/legs of an animal, inventor of an
                                         invention; English or Chinese subject (answer in that language:
                                         "France, capital: Paris", "法国，首都：巴黎")
    current_time(timezone)               MOCK: a fixed clock (`with mocks.at(instant)`, else $MINIMIND_MOCK_NOW,
                                         else 2025-05-20T08:30Z) shown in a city, IANA zone or UTC offset
    weather(city, unit)                  MOCK: one fixed forecast per city of a table and day of the mock clock
    exchange_rate(base, quote, amount)   MOCK: fixed demonstration rates from a table

The mocks are deterministic so that training data, rewards and benchmark answers stay true; their
schema descriptions say MOCK and their results carry "[mock clock]", "[mock weather]", "[mock rates]"
("[模拟时钟]" ... when asked in Chinese). See mocks.py for the tables.

Every call is checked and limited (registry.py): an unknown tool, arguments that are not a JSON
object or do not match the schema (types, required fields, enums, unexpected names), a tool's own
refusal, an exception, a call that runs past the time limit (5 s by default) - each is answered
with a result starting "error: " instead of raising; results longer than 1000 characters are cut
with a marker.

Your own tools, from Python:

    @tools.tool("Reverse a string.", {"type": "object", "properties": {"text": {"type": "string"}},
                                      "required": ["text"]})
    def reverse(text: str) -> str:
        return text[::-1]

    tools.register("shout", lambda text: text.upper(), {"name": "shout", "description": "...",
                   "parameters": {...}}, time_limit=1.0)

Both add to the default registry that `execute` and `schemas` use. A separate set of tools, with
its own limits, is a `ToolRegistry()` (or `default_registry()` for one holding the built-ins).
"""

from __future__ import annotations

from .base import ToolError, format_number
from .calculator import SCHEMA as CALCULATOR_SCHEMA
from .calculator import calculator
from .lookup import SCHEMA as LOOKUP_SCHEMA
from .lookup import lookup
from .mocks import SCHEMAS as MOCK_SCHEMAS
from .mocks import current_time, exchange_rate, weather
from .registry import DEFAULT_MAX_CHARS, DEFAULT_TIME_LIMIT, Tool, ToolRegistry
from .units import SCHEMA as UNIT_SCHEMA
from .units import unit_converter

BUILTINS = [
    (calculator, CALCULATOR_SCHEMA),
    (unit_converter, UNIT_SCHEMA),
    (lookup, LOOKUP_SCHEMA),
    (current_time, MOCK_SCHEMAS["current_time"]),
    (weather, MOCK_SCHEMAS["weather"]),
    (exchange_rate, MOCK_SCHEMAS["exchange_rate"]),
]


def default_registry(**limits) -> ToolRegistry:
    """A new registry holding the built-in tools; `limits` are ToolRegistry's (time_limit, max_chars, ...)."""
    registry = ToolRegistry(**limits)
    for fn, schema in BUILTINS:
        registry.register(schema["function"]["name"], fn, schema)
    return registry


REGISTRY = default_registry()
register = REGISTRY.register
unregister = REGISTRY.unregister
tool = REGISTRY.tool
schemas = REGISTRY.schemas
execute = REGISTRY.execute
execute_openai = REGISTRY.execute_openai
check = REGISTRY.check
names = REGISTRY.names
run_tool_call = execute  # the name eval/tasks.py has always used

__all__ = [
    "BUILTINS", "DEFAULT_MAX_CHARS", "DEFAULT_TIME_LIMIT", "REGISTRY", "Tool", "ToolError", "ToolRegistry",
    "calculator", "check", "current_time", "default_registry", "exchange_rate", "execute", "execute_openai",
    "format_number", "lookup", "names", "register", "run_tool_call", "schemas", "tool", "unit_converter", "unregister",
    "weather",
]
