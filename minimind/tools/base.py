"""Small pieces every tool shares: the error a tool raises, number formatting, name matching."""

from __future__ import annotations

import difflib
import math
import unicodedata


class ToolError(ValueError):
    """A tool's answer to bad arguments: the registry turns it into the result "error: <tool>: <message>".

    A ValueError, so code that called the old calculator with `except ValueError` keeps working.
    """


def format_number(x: int | float) -> str:
    """Integers without ".0", other floats rounded to 6 decimals: 10.0 -> "10", 7/2 -> "3.5", 1/3 -> "0.333333".

    A tiny float that would round to 0 keeps 6 significant digits instead ("1e-09"), and a float too
    large to be exact (>= 1e16) keeps Python's exponent form rather than printing invented digits.
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise TypeError(f"not a number: {x!r}")
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x) or abs(x) >= 1e16:
        return str(x)
    r = round(x, 6)
    if r == 0 and x != 0:
        return f"{x:.6g}"
    return str(int(r)) if r.is_integer() else str(r)


def short(value: object, limit: int = 60) -> str:
    """repr() cut to `limit` characters: error messages echo what they got without echoing a megabyte."""
    text = value[: limit + 1] if isinstance(value, str) else value
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_chinese(text: str) -> bool:
    """True when the text contains a CJK ideograph: the tools answer in the language they were asked in."""
    return any("CJK" in unicodedata.name(ch, "") for ch in text)


def normalize(name: str) -> str:
    """Case-, width- and space-insensitive key: " The  United-States " -> "unitedstates"."""
    key = unicodedata.normalize("NFKC", name).casefold().strip()
    if key.startswith("the "):
        key = key[4:]
    return "".join(ch for ch in key if not ch.isspace() and ch not in "-_'")


class Names:
    """Names -> values, matched by `normalize`; an unknown name raises a ToolError with close matches.

    `listed`: names an error prints in full (a short table such as the units), or None to print only
    close matches (a long one such as the corpus's subjects) and the `hint`.
    """

    MAX = 100  # a name longer than this is no name: refused before fuzzy matching

    def __init__(self, what: str, pairs, listed: list[str] | None = None, hint: str = ""):
        self.what, self.listed, self.hint = what, listed, hint
        self.index, self.shown = {}, {}
        for name, value in pairs:
            key = normalize(name)
            self.index.setdefault(key, value)
            self.shown.setdefault(key, name)

    def __contains__(self, name: str) -> bool:
        return normalize(name) in self.index

    def __call__(self, given: str):
        key = normalize(given) if len(given) <= self.MAX else None
        if key in self.index:
            return self.index[key]
        raise self.unknown(given)

    def unknown(self, given: str) -> ToolError:
        """The error for a name that is not in the table: close matches, or the list, or the hint."""
        if len(given) > self.MAX:
            return ToolError(f"{self.what} too long ({len(given)} characters; names have at most {self.MAX})")
        msg = f"unknown {self.what} {short(given)}"
        close = self.close(normalize(given))
        msg += ("; did you mean " + " or ".join(repr(c) for c in close) + "?") if close else "."
        if self.listed:
            msg += f" Known {self.what} names: " + ", ".join(self.listed)
        elif self.hint:
            msg += " " + self.hint
        return ToolError(msg)

    def close(self, key: str, n: int = 3) -> list[str]:
        """Up to n names similar to `key`, one per distinct value (not "kilometer" and "kilometre")."""
        out, seen = [], []
        for k in difflib.get_close_matches(key, list(self.index), n=4 * n, cutoff=0.6):
            if not any(self.index[k] is v for v in seen):
                seen.append(self.index[k])
                out.append(self.shown[k])
        return out[:n]
