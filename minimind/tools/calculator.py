"""calculator: exact arithmetic on text a model wrote, without ever running it as code.

The expression is parsed by Python's own parser (`ast.parse(text, mode="eval")`) and the tree is
walked here. Only these nodes are values:

    number          an int or float literal (not bool, not complex)
    a + b, a - b    operator.add / operator.sub
    a * b, a / b    operator.mul / operator.truediv  (7/2 = 3.5; int results print without ".0")
    a ** b          only when |a ** b| <= 1e100, decided before computing:  b * log10|a| <= 100
    +a, -a          unary plus / minus

A name, call, attribute, subscript, comprehension, lambda, `;` statement ... is not a value but an
error: "__import__('os').system('x')" is a Call node and is refused, never evaluated.

Work is bounded before it is done, so no input can hang the process or eat memory:
the text has at most 500 characters, parentheses nest at most 50 deep, every literal and every
intermediate result stays within ±1e100 (so a product of two values is at most a 200-digit
multiplication), and `**` is refused when its result would pass that bound ("9**9**9" is refused at
once instead of computing a 370-million-digit number).

Model-friendly spellings are accepted: × and x for *, ÷ for /, ^ for **, full-width parentheses,
the Unicode minus sign, and a trailing "=".
"""

from __future__ import annotations

import ast
import math
import operator

from .base import ToolError, format_number

MAX_LENGTH = 500
MAX_PARENS = 50
MAX_ABS = 10 ** 100
MAX_LOG10 = 100  # log10(MAX_ABS)

SCHEMA = {"type": "function", "function": {
    "name": "calculator",
    "description": "Evaluate an arithmetic expression (+, -, *, /, ** and parentheses) and return the result.",
    "parameters": {"type": "object",
                   "properties": {"expression": {"type": "string", "description": "The expression to evaluate."}},
                   "required": ["expression"]}}}

_SPELLINGS = str.maketrans({"×": "*", "x": "*", "X": "*", "÷": "/", "^": "**", "（": "(", "）": ")", "−": "-"})


def _power(a: int | float, b: int | float) -> int | float:
    """a ** b, refused before computing when |a ** b| > 1e100, i.e. when b * log10|a| > 100."""
    if a == 0:
        if b < 0:
            raise ZeroDivisionError("zero to a negative power")
        return 0 ** b
    if b * math.log10(abs(a)) > MAX_LOG10:
        raise ToolError("result too large (numbers are limited to 1e100)")
    result = a ** b
    if isinstance(result, complex):
        raise ToolError("a negative number to a fractional power is not a real number")
    return result


_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.Pow: _power}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def _bounded(v: int | float) -> int | float:
    if (isinstance(v, float) and not math.isfinite(v)) or abs(v) > MAX_ABS:
        raise ToolError("number too large (numbers are limited to 1e100)")
    return v


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        return _bounded(_BINARY[type(node.op)](_eval(node.left), _eval(node.right)))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    raise ToolError("only numbers, + - * / ** and parentheses are allowed")


def _check_shape(expr: str) -> None:
    """Refuse what would make the parser itself work hard: too long, too deeply nested."""
    if not expr:
        raise ToolError("empty expression")
    if len(expr) > MAX_LENGTH:
        raise ToolError(f"expression too long ({len(expr)} characters; the limit is {MAX_LENGTH})")
    depth = 0
    for ch in expr:
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_PARENS:
            raise ToolError(f"parentheses nested more than {MAX_PARENS} deep")


def calculator(expression: str) -> str:
    """The value of an arithmetic expression as text: "37*59" -> "2183", "7/2" -> "3.5"."""
    expr = str(expression).translate(_SPELLINGS).strip().rstrip("=").strip()
    _check_shape(expr)
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError) as e:  # ValueError: a NUL byte, on Python < 3.12
        raise ToolError(f"not an arithmetic expression ({getattr(e, 'msg', e)})") from None
    try:
        return format_number(_eval(tree.body))
    except ZeroDivisionError:
        raise ToolError("division by zero") from None
    except OverflowError:
        raise ToolError("result too large") from None
    except RecursionError:
        raise ToolError("expression nested too deeply") from None
