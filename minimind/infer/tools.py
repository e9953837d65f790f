"""Tools the model may call, executed safely: the built-in calculator.

`calculator(expression)` evaluates + - * / ( ) and numbers by walking Python's AST — never `eval`,
so model output cannot run code. `run_tool_call(call)` returns the text of the tool message that
answers a parsed call ({"name", "arguments"}), or an error text the model can read.
"""

from __future__ import annotations

import ast
import operator

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    expr = str(expression).replace("×", "*").replace("÷", "/").replace("x", "*")
    if len(expr) > 200:
        raise ValueError("expression too long")

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.operand))
        raise ValueError("only numbers and + - * / ( ) are allowed")

    value = ev(ast.parse(expr, mode="eval"))
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(round(value, 6) if isinstance(value, float) else value)


TOOLS = {"calculator": lambda args: calculator(args.get("expression", ""))}


def run_tool_call(call: dict) -> str:
    fn = TOOLS.get(call.get("name"))
    if fn is None:
        return f"error: unknown tool {call.get('name')!r}"
    try:
        return fn(call.get("arguments") or {})
    except (ValueError, SyntaxError, ZeroDivisionError, TypeError) as e:
        return f"error: {e}"
