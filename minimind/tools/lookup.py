"""lookup: a tiny retrieval tool over the built-in corpus's fact tables (subject + relation -> value).

A model of a few million parameters cannot memorise the world, but it can ask. The table is the
one the corpus is written from (minimind/data/synth.py `fact_table()`): countries (capital,
continent), planets (planet_order, moons), chemical elements (symbol, atomic_number), animals
(animal_class, diet, legs) and inventions (inventor).

Subjects are matched by English or Chinese name, case- and space-insensitively, with or without
a leading "the" ("the United States", "united states", "美国"); relations by their names in
`RELATIONS` ("atomic_number", "Atomic Number"). The answer is the corpus's short answer after the
subject and relation, in Chinese when the subject was named in Chinese:
lookup("france", "capital") -> "France, capital: Paris", lookup("法国", "capital") -> "法国，首都：巴黎".
The value comes after a space, as it does in a reply ("... is Paris."): a byte-level BPE token
" Paris" is not the token "Paris", and a small model copies a result into its reply far more
easily when the result holds the very tokens the reply needs (the numbers of the other tools
already do). An unknown subject or relation is answered with close matches.
"""

from __future__ import annotations

from functools import lru_cache

from ..data.synth import RELATIONS, fact_table
from .base import Names, ToolError, is_chinese

_PLURAL = {"country": "countries", "planet": "planets", "element": "chemical elements",
           "animal": "animals", "invention": "inventions"}


# how a result names the relation in Chinese
RELATION_ZH = {"capital": "首都", "continent": "所在大洲", "planet_order": "离太阳的次序", "moons": "卫星数",
               "symbol": "化学符号", "atomic_number": "原子序数", "animal_class": "类别", "diet": "食性",
               "legs": "腿数", "inventor": "发明者"}


def _relations_by_table() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for rel in RELATIONS:
        out.setdefault(rel.table, []).append(rel.name)
    return out


def _schema() -> dict:
    kinds = "; ".join(f"{', '.join(rels)} ({_PLURAL.get(table, table + 's')})"
                      for table, rels in _relations_by_table().items())
    return {"type": "function", "function": {
        "name": "lookup",
        "description": f"Look up a fact in the built-in encyclopedia. Relations: {kinds}.",
        "parameters": {"type": "object", "properties": {
            "subject": {"type": "string", "description": "What the fact is about, e.g. France or 法国."},
            "relation": {"type": "string", "description": "Which fact, e.g. capital."}},
            "required": ["subject", "relation"]}}}


SCHEMA = _schema()


class Encyclopedia:
    """lookup over a list of fact rows ({"table", "subject", "subject_zh", "relation", "answer",
    "answer_zh"}, as `fact_table()` writes them): the built-in tool is the one over the corpus's table;
    the training data also asks one over invented subjects that no other text states (synth_tools.py)."""

    def __init__(self, rows: list[dict]):
        entries: dict[tuple[str, str], dict] = {}
        for row in rows:
            entry = entries.setdefault((row["table"], row["subject"]),
                                       {"name": row["subject"], "zh": row["subject_zh"], "table": row["table"],
                                        "answers": {}})
            entry["answers"][row["relation"]] = (row["answer"], row["answer_zh"])
        # a subject's value is {table: entry}, so the relation decides between tables should two share a name
        by_name: dict[str, dict] = {}
        for e in entries.values():
            for name in (e["name"], e["zh"]):
                by_name.setdefault(name, {})[e["table"]] = e
        kinds = ", ".join(_PLURAL.get(t, t + "s") for t in _relations_by_table())
        self.subjects = Names("subject", by_name.items(), hint=f"Subjects are the {kinds} of the built-in corpus.")
        self.relations = Names("relation", [(r.name, r) for r in RELATIONS], listed=[r.name for r in RELATIONS])

    def __call__(self, subject: str, relation: str) -> str:
        by_table, rel = self.subjects(subject), self.relations(relation)
        entry = by_table.get(rel.table)
        if entry is None:
            entry = next(iter(by_table.values()))
            asks = ", ".join(entry["answers"])
            raise ToolError(f"{rel.name!r} is not a relation of {entry['name']} (one of the "
                            f"{_PLURAL.get(entry['table'], entry['table'])}); ask for {asks}")
        en, zh = entry["answers"][rel.name]
        if is_chinese(subject):
            return f"{entry['zh']}，{RELATION_ZH[rel.name]}：{zh}"
        return f"{entry['name']}, {rel.name.replace('_', ' ')}: {en}"


@lru_cache(maxsize=1)
def builtin() -> Encyclopedia:
    """The encyclopedia of the built-in corpus (built once, on the first call)."""
    return Encyclopedia(fact_table())


def lookup(subject: str, relation: str) -> str:
    """The fact with its subject and relation: lookup("france", "capital") -> "France, capital: Paris";
    lookup("法国", "capital") -> "法国，首都：巴黎"."""
    return builtin()(subject, relation)
