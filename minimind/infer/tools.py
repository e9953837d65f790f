"""Moved: the tools live in `minimind.tools`. This path stays so that older imports keep working."""

from ..tools import calculator, run_tool_call  # noqa: F401

__all__ = ["calculator", "run_tool_call"]
