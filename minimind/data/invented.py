"""Invented subjects: facts that only a tool knows, so that a model learns to read the tool's result.

In every lookup the corpus asks, the model's memory and the tool agree: the corpus states each fact
in pretraining and asks it in SFT. A model trained only on those can answer "The capital of Japan is
Riyadh." right after `lookup(Japan, capital)` returned Tokyo: nothing ever showed it that the
result, not its memory, is what to say. A lookup about an invented country ("What is the capital
of Velmora?" -> lookup -> "Tarsk" -> "The capital of Velmora is Tarsk.") can only be answered by
copying the result, and the subject can only be named by copying the question.

`invent(rng, table)` draws one Subject of a fact table (country, element, animal, invention; planets
have too few slots to invent) with names built from syllables and their Chinese transliterations
("Kalomar" / "卡洛马"), never the name of a real subject, and random values for its relations
(a capital, a continent, a symbol and an atomic number above 118, ...). The Subject has the slots
the corpus's relation templates fill, so its questions and answer sentences are the corpus's own.
Each draw is fresh: the same name may get another capital in another conversation, which a model
can only follow by reading the tool.
"""

from __future__ import annotations

import random

from .synth import (ANIMAL_CLASS, CONTINENT_ZH, DIETS, Subject, _all_subjects, _article, _cap)

# (English syllable, its Chinese transliteration)
SYLLABLES = [
    ("ka", "卡"), ("lo", "洛"), ("ven", "文"), ("mar", "马"), ("ti", "蒂"), ("ra", "拉"), ("sel", "塞"),
    ("dor", "多"), ("bi", "比"), ("nu", "努"), ("zan", "赞"), ("fel", "费"), ("ga", "加"), ("tov", "托夫"),
    ("mi", "米"), ("len", "伦"), ("sha", "沙"), ("po", "波"), ("vi", "维"), ("ta", "塔"), ("hal", "哈尔"),
    ("mon", "蒙"), ("lu", "卢"), ("ber", "贝尔"), ("go", "戈"), ("qua", "夸"), ("den", "登"), ("so", "索"),
    ("kel", "凯尔"), ("ru", "鲁"), ("pen", "彭"), ("dra", "德拉"),
]
DEVICES = [("engine", "发动机"), ("lamp", "灯"), ("loom", "织机"), ("pump", "水泵"), ("compass", "罗盘"),
           ("clock", "时钟"), ("press", "压机"), ("kettle", "水壶")]
LEGS = [2, 4, 6, 8]
TABLES = ("country", "element", "animal", "invention")


def _real_names() -> set[str]:
    out = set()
    for s in _all_subjects():
        out |= {s.name.lower(), s.zh}
        out |= {str(v).lower() for v in s.slots.values()}
    return out


_REAL: set[str] | None = None


def _word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> tuple[str, str]:
    """An invented word and its Chinese transliteration, never a real subject's name or value."""
    global _REAL
    if _REAL is None:
        _REAL = _real_names()
    while True:
        parts = [rng.choice(SYLLABLES) for _ in range(rng.randint(*syllables))]
        en, zh = "".join(p[0] for p in parts), "".join(p[1] for p in parts)
        if en not in _REAL and zh not in _REAL:
            return en, zh


def invent(rng: random.Random, table: str) -> Subject:
    """One invented subject of `table` with the slots of the corpus's relation templates."""
    name, zh = _word(rng)
    if table == "country":
        cap, cap_zh = _word(rng)
        cont = rng.choice(list(CONTINENT_ZH))
        slots = dict(name=_cap(name), Name=_cap(name), zh=zh, capital=_cap(cap), capital_zh=cap_zh,
                     continent=cont, continent_zh=CONTINENT_ZH[cont])
        return Subject("country", _cap(name), zh, slots)
    if table == "element":
        name, zh = name + "ium", zh + "素"
        symbol = name[0].upper() + rng.choice("bcdfgjkqvwxz")
        while symbol.lower() in _REAL:  # "Pb" is lead's
            symbol = name[0].upper() + rng.choice("bcdfgjkqvwxz")
        slots = dict(name=name, Name=_cap(name), zh=zh, symbol=symbol, number=rng.randint(119, 400))
        return Subject("element", name, zh, slots)
    if table == "animal":
        zh += "兽"
        cls, diet = rng.choice(list(ANIMAL_CLASS)), rng.choice(list(DIETS))
        cls_a, cls_pl, cls_zh = ANIMAL_CLASS[cls]
        diet_a, diet_pl, food, diet_zh, food_zh = DIETS[diet]
        pl = name + "s"
        slots = dict(name=name, a=_article(name), A=_cap(_article(name)), the="the " + name, pl=pl, Pl=_cap(pl),
                     zh=zh, cls=cls, cls_a=cls_a, cls_pl=cls_pl, cls_zh=cls_zh, diet=diet, diet_a=diet_a,
                     diet_pl=diet_pl, food=food, diet_zh=diet_zh, food_zh=food_zh, legs=rng.choice(LEGS))
        return Subject("animal", name, zh, slots)
    if table == "invention":
        device, device_zh = rng.choice(DEVICES)
        first, first_zh = _word(rng, (1, 2))
        last, last_zh = _word(rng)
        who = f"{_cap(first)} {_cap(last)}"
        thing = f"the {name} {device}"
        slots = dict(thing=thing, Thing=_cap(thing), zh=zh + device_zh, inventor=who, Inventor=who,
                     inventor_short=who, inventor_zh=f"{first_zh}·{last_zh}")
        return Subject("invention", thing, zh + device_zh, slots)
    raise ValueError(f"no invented subjects for table {table!r}; one of {', '.join(TABLES)}")


def swap_answer(rng: random.Random, fact, pool: list[Subject]):
    """A substituted fact (Longpre et al., "Entity-Based Knowledge Conflicts in Question Answering",
    EMNLP 2021): `fact`'s subject with the value of another subject of `pool` for the same relation
    ("France, capital: Nairobi"), so that a tool answer and the model's memory disagree.

    Training a reader on such contexts makes it state what the context says rather than what it
    remembers. Here it teaches a lookup reply to follow the result even for a subject the model
    half-knows, which invented subjects (no memory at all) cannot. Returns a Fact whose subject is a
    copy of `fact.subj` with the answer slots replaced; `pool` must hold a subject of the same table
    with a different value (the caller keeps held-out values out of it).
    """
    from .synth import Fact

    rel = fact.rel
    others = [s for s in pool if s.table == fact.subj.table and Fact(rel, s).short("en") != fact.short("en")]
    if not others:
        raise ValueError(f"no other value for {fact.id} in a pool of {len(pool)} subjects")
    return fact.with_value_of(rng.choice(others))
