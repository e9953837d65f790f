"""The built-in corpus: a small bilingual (English/Chinese) dataset for every training stage.

Downloads are slow or impossible on many machines, and a learner should see every stage work
in minutes on a CPU. So the project carries this generator. From a few fact tables (countries,
planets, chemical elements, animals, inventions) and simple arithmetic it writes, in the public
MiniMind JSONL formats:

    pretrain.jsonl            {"text"}: encyclopedic paragraphs, stories, worked arithmetic
    sft.jsonl                 {"conversations"}: identity, fact QA, addition, tool calls (every
                              tool of minimind/tools, synth_tools.py), stories, multi-turn;
                              ~15% with reasoning_content
    reason.jsonl              every assistant turn has reasoning_content (distillation)
    dpo.jsonl                 {"chosen", "rejected"}: a correct answer and a typical mistake
    rlaif.jsonl               {"conversations", "gt"}: prompts with a verifiable answer
    agent_rl.jsonl            {"conversations", "gt", "tool"}: tool tasks for agentic RL
    lora_identity.jsonl       a new identity ("Lumen") mixed with ordinary QA
    lora_domain.jsonl         astronomy QA about the planets
    mcq.jsonl                 {"question", "choices", "answer", "family"}
    eval/heldout*.jsonl       held-out evaluation sets (see below)
    manifest.json             seed, size, counts, and the held-out split itself

How the data is made learnable by a ~5M-parameter model in minutes:

* Every fact is stated in pretraining text many times, in several English and Chinese
  paraphrases, in documents about one subject, about groups of subjects and in bilingual
  glossaries. A small model only learns to *extract* a fact when it has seen it phrased in
  different ways (Allen-Zhu & Li, "Physics of Language Models 3.1", 2023).
* The SFT answer to a fact question is one fixed sentence ("The capital of France is Paris."),
  which is also one of the pretraining phrasings: fine-tuning teaches the model to answer by
  restating what it read, which carries over to facts it was never asked about.
* Addition is shown as plain equations, as column addition with carries, and in word problems.

The held-out split is drawn first, from its own seeded random generator, so it depends on the
seed only (not on `size`):

* held-out facts (about a quarter of each relation): stated in pretraining text, but never asked
  about in any training file; `eval/heldout.jsonl` family "fact" asks about them;
* held-out two-digit addition pairs: in no training file at all, in either order or any form;
* held-out tasks of every tool (synth_tools.py; eval/tools_heldout.jsonl, a part of them in
  eval/heldout.jsonl family "tool") and held-out phrasings of "who are you?".

Everything is deterministic: the same seed and size give byte-identical files.
Eval answers are short strings ("Paris", "71"); match them as whole words/numbers.
"""

from __future__ import annotations

import itertools
import json
import math
import random
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..tokenizer import render_chat_text

# ============================================================================ fact tables

CONTINENT_ZH = {
    "Europe": "欧洲", "Asia": "亚洲", "Africa": "非洲", "North America": "北美洲",
    "South America": "南美洲", "Oceania": "大洋洲",
}

# (name, Chinese name, capital, capital in Chinese, continent)
COUNTRIES = [
    ("France", "法国", "Paris", "巴黎", "Europe"),
    ("Germany", "德国", "Berlin", "柏林", "Europe"),
    ("Italy", "意大利", "Rome", "罗马", "Europe"),
    ("Spain", "西班牙", "Madrid", "马德里", "Europe"),
    ("Portugal", "葡萄牙", "Lisbon", "里斯本", "Europe"),
    ("the United Kingdom", "英国", "London", "伦敦", "Europe"),
    ("Ireland", "爱尔兰", "Dublin", "都柏林", "Europe"),
    ("the Netherlands", "荷兰", "Amsterdam", "阿姆斯特丹", "Europe"),
    ("Belgium", "比利时", "Brussels", "布鲁塞尔", "Europe"),
    ("Switzerland", "瑞士", "Bern", "伯尔尼", "Europe"),
    ("Austria", "奥地利", "Vienna", "维也纳", "Europe"),
    ("Poland", "波兰", "Warsaw", "华沙", "Europe"),
    ("Sweden", "瑞典", "Stockholm", "斯德哥尔摩", "Europe"),
    ("Norway", "挪威", "Oslo", "奥斯陆", "Europe"),
    ("Finland", "芬兰", "Helsinki", "赫尔辛基", "Europe"),
    ("Greece", "希腊", "Athens", "雅典", "Europe"),
    ("Hungary", "匈牙利", "Budapest", "布达佩斯", "Europe"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科", "Europe"),
    ("China", "中国", "Beijing", "北京", "Asia"),
    ("Japan", "日本", "Tokyo", "东京", "Asia"),
    ("South Korea", "韩国", "Seoul", "首尔", "Asia"),
    ("India", "印度", "New Delhi", "新德里", "Asia"),
    ("Indonesia", "印度尼西亚", "Jakarta", "雅加达", "Asia"),
    ("Thailand", "泰国", "Bangkok", "曼谷", "Asia"),
    ("Vietnam", "越南", "Hanoi", "河内", "Asia"),
    ("the Philippines", "菲律宾", "Manila", "马尼拉", "Asia"),
    ("Malaysia", "马来西亚", "Kuala Lumpur", "吉隆坡", "Asia"),
    ("Pakistan", "巴基斯坦", "Islamabad", "伊斯兰堡", "Asia"),
    ("Nepal", "尼泊尔", "Kathmandu", "加德满都", "Asia"),
    ("Mongolia", "蒙古", "Ulaanbaatar", "乌兰巴托", "Asia"),
    ("Iran", "伊朗", "Tehran", "德黑兰", "Asia"),
    ("Iraq", "伊拉克", "Baghdad", "巴格达", "Asia"),
    ("Saudi Arabia", "沙特阿拉伯", "Riyadh", "利雅得", "Asia"),
    ("Turkey", "土耳其", "Ankara", "安卡拉", "Asia"),
    ("Afghanistan", "阿富汗", "Kabul", "喀布尔", "Asia"),
    ("Cambodia", "柬埔寨", "Phnom Penh", "金边", "Asia"),
    ("Egypt", "埃及", "Cairo", "开罗", "Africa"),
    ("Nigeria", "尼日利亚", "Abuja", "阿布贾", "Africa"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕", "Africa"),
    ("Ethiopia", "埃塞俄比亚", "Addis Ababa", "亚的斯亚贝巴", "Africa"),
    ("Morocco", "摩洛哥", "Rabat", "拉巴特", "Africa"),
    ("Ghana", "加纳", "Accra", "阿克拉", "Africa"),
    ("Algeria", "阿尔及利亚", "Algiers", "阿尔及尔", "Africa"),
    ("Uganda", "乌干达", "Kampala", "坎帕拉", "Africa"),
    ("Senegal", "塞内加尔", "Dakar", "达喀尔", "Africa"),
    ("Sudan", "苏丹", "Khartoum", "喀土穆", "Africa"),
    ("Zimbabwe", "津巴布韦", "Harare", "哈拉雷", "Africa"),
    ("Madagascar", "马达加斯加", "Antananarivo", "塔那那利佛", "Africa"),
    ("the United States", "美国", "Washington", "华盛顿", "North America"),
    ("Canada", "加拿大", "Ottawa", "渥太华", "North America"),
    ("Mexico", "墨西哥", "Mexico City", "墨西哥城", "North America"),
    ("Cuba", "古巴", "Havana", "哈瓦那", "North America"),
    ("Jamaica", "牙买加", "Kingston", "金斯敦", "North America"),
    ("Panama", "巴拿马", "Panama City", "巴拿马城", "North America"),
    ("Costa Rica", "哥斯达黎加", "San Jose", "圣何塞", "North America"),
    ("Brazil", "巴西", "Brasilia", "巴西利亚", "South America"),
    ("Argentina", "阿根廷", "Buenos Aires", "布宜诺斯艾利斯", "South America"),
    ("Chile", "智利", "Santiago", "圣地亚哥", "South America"),
    ("Peru", "秘鲁", "Lima", "利马", "South America"),
    ("Colombia", "哥伦比亚", "Bogota", "波哥大", "South America"),
    ("Venezuela", "委内瑞拉", "Caracas", "加拉加斯", "South America"),
    ("Uruguay", "乌拉圭", "Montevideo", "蒙得维的亚", "South America"),
    ("Australia", "澳大利亚", "Canberra", "堪培拉", "Oceania"),
    ("New Zealand", "新西兰", "Wellington", "惠灵顿", "Oceania"),
    ("Fiji", "斐济", "Suva", "苏瓦", "Oceania"),
    ("Papua New Guinea", "巴布亚新几内亚", "Port Moresby", "莫尔斯比港", "Oceania"),
]

ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth"]
ORDINALS_ZH = ["第一", "第二", "第三", "第四", "第五", "第六", "第七", "第八"]
PLANET_TYPE_ZH = {"rocky planet": "岩质行星", "gas giant": "气态巨行星", "ice giant": "冰巨星"}

# (name, Chinese name, known moons, type); listed in order from the Sun
PLANETS = [
    ("Mercury", "水星", 0, "rocky planet"),
    ("Venus", "金星", 0, "rocky planet"),
    ("Earth", "地球", 1, "rocky planet"),
    ("Mars", "火星", 2, "rocky planet"),
    ("Jupiter", "木星", 95, "gas giant"),
    ("Saturn", "土星", 146, "gas giant"),
    ("Uranus", "天王星", 28, "ice giant"),
    ("Neptune", "海王星", 16, "ice giant"),
]

# (name, Chinese name, symbol, atomic number)
ELEMENTS = [
    ("hydrogen", "氢", "H", 1), ("helium", "氦", "He", 2), ("lithium", "锂", "Li", 3),
    ("beryllium", "铍", "Be", 4), ("boron", "硼", "B", 5), ("carbon", "碳", "C", 6),
    ("nitrogen", "氮", "N", 7), ("oxygen", "氧", "O", 8), ("fluorine", "氟", "F", 9),
    ("neon", "氖", "Ne", 10), ("sodium", "钠", "Na", 11), ("magnesium", "镁", "Mg", 12),
    ("aluminium", "铝", "Al", 13), ("silicon", "硅", "Si", 14), ("phosphorus", "磷", "P", 15),
    ("sulfur", "硫", "S", 16), ("chlorine", "氯", "Cl", 17), ("argon", "氩", "Ar", 18),
    ("potassium", "钾", "K", 19), ("calcium", "钙", "Ca", 20), ("iron", "铁", "Fe", 26),
    ("nickel", "镍", "Ni", 28), ("copper", "铜", "Cu", 29), ("zinc", "锌", "Zn", 30),
    ("silver", "银", "Ag", 47), ("tin", "锡", "Sn", 50), ("iodine", "碘", "I", 53),
    ("gold", "金", "Au", 79), ("lead", "铅", "Pb", 82), ("uranium", "铀", "U", 92),
]

ANIMAL_CLASS = {  # class -> (with article, plural, Chinese)
    "mammal": ("a mammal", "mammals", "哺乳动物"), "bird": ("a bird", "birds", "鸟类"),
    "reptile": ("a reptile", "reptiles", "爬行动物"),
    "amphibian": ("an amphibian", "amphibians", "两栖动物"), "fish": ("a fish", "fish", "鱼类"),
    "insect": ("an insect", "insects", "昆虫"), "arachnid": ("an arachnid", "arachnids", "蛛形动物"),
}
DIETS = {  # diet -> (with article, plural, what it eats, Chinese, what it eats in Chinese)
    "herbivore": ("a herbivore", "herbivores", "only plants", "食草动物", "植物"),
    "carnivore": ("a carnivore", "carnivores", "meat", "食肉动物", "肉"),
    "omnivore": ("an omnivore", "omnivores", "both plants and meat", "杂食动物", "植物和肉"),
}

# (name, plural, Chinese name, class, diet, legs). Chinese names are chosen so that none is
# the tail of another (e.g. no 熊猫 next to 猫): "猫有几条腿？" would hide inside "熊猫有几条腿？".
ANIMALS = [
    ("dog", "dogs", "狗", "mammal", "omnivore", 4), ("cat", "cats", "家猫", "mammal", "carnivore", 4),
    ("cow", "cows", "奶牛", "mammal", "herbivore", 4), ("horse", "horses", "马", "mammal", "herbivore", 4),
    ("lion", "lions", "狮子", "mammal", "carnivore", 4), ("tiger", "tigers", "老虎", "mammal", "carnivore", 4),
    ("elephant", "elephants", "大象", "mammal", "herbivore", 4),
    ("giraffe", "giraffes", "长颈鹿", "mammal", "herbivore", 4),
    ("rabbit", "rabbits", "兔子", "mammal", "herbivore", 4), ("bear", "bears", "熊", "mammal", "omnivore", 4),
    ("panda", "pandas", "熊猫", "mammal", "herbivore", 4), ("pig", "pigs", "猪", "mammal", "omnivore", 4),
    ("sheep", "sheep", "绵羊", "mammal", "herbivore", 4), ("wolf", "wolves", "狼", "mammal", "carnivore", 4),
    ("fox", "foxes", "狐狸", "mammal", "omnivore", 4),
    ("kangaroo", "kangaroos", "袋鼠", "mammal", "herbivore", 2),
    ("whale", "whales", "鲸鱼", "mammal", "carnivore", 0),
    ("dolphin", "dolphins", "海豚", "mammal", "carnivore", 0),
    ("eagle", "eagles", "老鹰", "bird", "carnivore", 2), ("chicken", "chickens", "鸡", "bird", "omnivore", 2),
    ("penguin", "penguins", "企鹅", "bird", "carnivore", 2), ("owl", "owls", "猫头鹰", "bird", "carnivore", 2),
    ("ostrich", "ostriches", "鸵鸟", "bird", "omnivore", 2), ("duck", "ducks", "鸭子", "bird", "omnivore", 2),
    ("snake", "snakes", "蛇", "reptile", "carnivore", 0),
    ("crocodile", "crocodiles", "鳄鱼", "reptile", "carnivore", 4),
    ("turtle", "turtles", "乌龟", "reptile", "omnivore", 4),
    ("frog", "frogs", "青蛙", "amphibian", "carnivore", 4),
    ("shark", "sharks", "鲨鱼", "fish", "carnivore", 0), ("goldfish", "goldfish", "金鱼", "fish", "omnivore", 0),
    ("ant", "ants", "蚂蚁", "insect", "omnivore", 6), ("bee", "bees", "蜜蜂", "insect", "herbivore", 6),
    ("butterfly", "butterflies", "蝴蝶", "insect", "herbivore", 6),
    ("spider", "spiders", "蜘蛛", "arachnid", "carnivore", 8),
]

# (thing, Chinese name, inventor, inventor in Chinese)
INVENTIONS = [
    ("the telephone", "电话", "Alexander Graham Bell", "贝尔"),
    ("the light bulb", "电灯泡", "Thomas Edison", "爱迪生"),
    ("the phonograph", "留声机", "Thomas Edison", "爱迪生"),
    ("the airplane", "飞机", "the Wright brothers", "莱特兄弟"),
    ("the printing press", "印刷机", "Johannes Gutenberg", "古腾堡"),
    ("the steam engine", "蒸汽机", "James Watt", "瓦特"),
    ("dynamite", "炸药", "Alfred Nobel", "诺贝尔"),
    ("the radio", "无线电", "Guglielmo Marconi", "马可尼"),
    ("the World Wide Web", "万维网", "Tim Berners-Lee", "伯纳斯-李"),
    ("the telegraph", "电报机", "Samuel Morse", "莫尔斯"),
    ("the battery", "电池", "Alessandro Volta", "伏打"),
    ("the cotton gin", "轧棉机", "Eli Whitney", "惠特尼"),
    ("the safety elevator", "安全电梯", "Elisha Otis", "奥的斯"),
    ("the mechanical reaper", "收割机", "Cyrus McCormick", "麦考密克"),
    ("the computer mouse", "鼠标", "Douglas Engelbart", "恩格尔巴特"),
    ("the pendulum clock", "摆钟", "Christiaan Huygens", "惠更斯"),
    ("the spinning jenny", "珍妮纺纱机", "James Hargreaves", "哈格里夫斯"),
    ("the lightning rod", "避雷针", "Benjamin Franklin", "富兰克林"),
    ("the motor car", "汽车", "Karl Benz", "本茨"),
    ("papermaking", "造纸术", "Cai Lun", "蔡伦"),
    ("the dishwasher", "洗碗机", "Josephine Cochrane", "科克伦"),
]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


@dataclass(frozen=True)
class Subject:
    """One row of a fact table; `slots` fill the sentence templates."""

    table: str  # "country", "planet", "element", "animal", "invention"
    name: str   # English name, unique within the table
    zh: str
    slots: dict


def _round_robin(subjects: list[Subject], key) -> list[Subject]:
    """Subjects reordered so that every prefix is balanced over `key` (continents, animal classes)."""
    groups: dict = {}
    for s in subjects:
        groups.setdefault(key(s), []).append(s)
    out, i = [], 0
    while len(out) < len(subjects):
        out += [g[i] for g in groups.values() if i < len(g)]
        i += 1
    return out


def _subjects(table_sizes: dict | None = None) -> list[Subject]:
    """Every row of the fact tables, or the first `table_sizes[table]` of each table, taken so
    that countries stay spread over the continents and animals over their classes."""
    rows = _all_subjects()
    if not table_sizes:
        return rows
    keys = {"country": lambda s: s.slots["continent"], "animal": lambda s: s.slots["cls"]}
    out = []
    for table in ("country", "planet", "element", "animal", "invention"):
        subs = [s for s in rows if s.table == table]
        if table in keys:
            subs = _round_robin(subs, keys[table])
        out += subs[:table_sizes.get(table, len(subs))]
    return out


def _all_subjects() -> list[Subject]:
    out = []
    for name, zh, cap, cap_zh, cont in COUNTRIES:
        slots = dict(name=name, Name=_cap(name), zh=zh, capital=cap, capital_zh=cap_zh,
                     continent=cont, continent_zh=CONTINENT_ZH[cont])
        out.append(Subject("country", name, zh, slots))
    for i, (name, zh, moons, kind) in enumerate(PLANETS):
        slots = dict(name=name, Name=name, zh=zh, ord=ORDINALS[i], Ord=_cap(ORDINALS[i]),
                     ord_zh=ORDINALS_ZH[i], n=i + 1, moons=moons,
                     moons_txt=f"{moons} moon" + ("" if moons == 1 else "s"),
                     type=kind, type_a=_article(kind), type_zh=PLANET_TYPE_ZH[kind])
        out.append(Subject("planet", name, zh, slots))
    for name, zh, sym, num in ELEMENTS:
        slots = dict(name=name, Name=_cap(name), zh=zh, symbol=sym, number=num)
        out.append(Subject("element", name, zh, slots))
    for name, pl, zh, cls, diet, legs in ANIMALS:
        cls_a, cls_pl, cls_zh = ANIMAL_CLASS[cls]
        diet_a, diet_pl, food, diet_zh, food_zh = DIETS[diet]
        slots = dict(name=name, a=_article(name), A=_cap(_article(name)), the="the " + name,
                     pl=pl, Pl=_cap(pl), zh=zh, cls=cls, cls_a=cls_a, cls_pl=cls_pl, cls_zh=cls_zh,
                     diet=diet, diet_a=diet_a, diet_pl=diet_pl, food=food, diet_zh=diet_zh,
                     food_zh=food_zh, legs=legs)
        out.append(Subject("animal", name, zh, slots))
    for thing, zh, who, who_zh in INVENTIONS:
        short = who[4:] if who.startswith("the ") else who  # "Wright brothers"
        slots = dict(thing=thing, Thing=_cap(thing), zh=zh, inventor=who, Inventor=_cap(who),
                     inventor_short=short, inventor_zh=who_zh)
        out.append(Subject("invention", thing, zh, slots))
    return out


# ============================================================================ relations

@dataclass(frozen=True)
class Relation:
    """A question one can ask about a subject, with every way of saying its answer.

    `en_a`/`zh_a` is the one answer sentence used in all fine-tuning data; it is also one of
    the pretraining phrasings, next to the paraphrases `en_s`/`zh_s`.
    """

    name: str
    table: str
    answer: tuple[str, str]  # slot names of the short answer in English / Chinese
    en_q: tuple[str, ...]
    zh_q: tuple[str, ...]
    en_a: str
    zh_a: str
    en_s: tuple[str, ...]
    zh_s: tuple[str, ...]
    needs: str = ""  # a slot that must be non-zero for the relation to apply (legs, moons)


RELATIONS = [
    Relation(
        "capital", "country", ("capital", "capital_zh"),
        ("What is the capital of {name}?", "Which city is the capital of {name}?",
         "What city is the capital of {name}?", "Name the capital of {name}."),
        ("{zh}的首都是哪里？", "{zh}的首都是哪座城市？", "{zh}的首都叫什么？", "请说出{zh}的首都。"),
        "The capital of {name} is {capital}.", "{zh}的首都是{capital_zh}。",
        ("{capital} is the capital of {name}.", "{capital} is the capital city of {name}.",
         "The capital city of {name} is {capital}.", "{Name} has its capital in {capital}.",
         "{capital}, the capital of {name}, is a busy city.", "{Name}'s capital is {capital}.",
         "The government of {name} meets in {capital}, its capital."),
        ("{capital_zh}是{zh}的首都。", "{zh}的首都城市是{capital_zh}。", "{zh}以{capital_zh}为首都。",
         "{capital_zh}是{zh}的首都，也是一座热闹的城市。", "{zh}的政府设在首都{capital_zh}。"),
    ),
    Relation(
        "continent", "country", ("continent", "continent_zh"),
        ("Which continent is {name} in?", "On which continent is {name}?",
         "What continent is {name} located in?"),
        ("{zh}位于哪个大洲？", "{zh}在哪个洲？", "{zh}属于哪个大洲？"),
        "{Name} is in {continent}.", "{zh}位于{continent_zh}。",
        ("{Name} is a country in {continent}.", "{Name} is located in {continent}.",
         "{Name} lies in {continent}.", "In {continent} there is a country called {name}.",
         "{Name} is one of the countries of {continent}."),
        ("{zh}是{continent_zh}的一个国家。", "{zh}在{continent_zh}。", "{continent_zh}有一个国家叫{zh}。",
         "{zh}属于{continent_zh}。"),
    ),
    Relation(
        "planet_order", "planet", ("ord", "ord_zh"),
        ("Which planet from the Sun is {name}?", "What position from the Sun does {name} have?",
         "Counting from the Sun, which planet is {name}?"),
        ("{zh}是离太阳第几近的行星？", "从太阳往外数，{zh}是第几颗行星？", "{zh}是太阳系的第几颗行星？"),
        "{Name} is the {ord} planet from the Sun.", "{zh}是离太阳{ord_zh}近的行星。",
        ("Counting outward from the Sun, {name} comes {ord}.", "{Name} is planet number {n} from the Sun.",
         "The {ord} planet from the Sun is {name}.", "{Name} orbits the Sun as the {ord} planet."),
        ("从太阳往外数，{zh}排在{ord_zh}位。", "{zh}是太阳系的{ord_zh}颗行星。", "离太阳{ord_zh}近的行星是{zh}。"),
    ),
    Relation(
        "moons", "planet", ("moons", "moons"),
        ("How many moons does {name} have?", "How many known moons does {name} have?",
         "What is the number of moons of {name}?"),
        ("{zh}有几颗卫星？", "{zh}有多少颗卫星？", "{zh}有多少颗已知的卫星？"),
        "{Name} has {moons_txt}.", "{zh}有{moons}颗卫星。",
        ("{Name} is circled by {moons_txt}.", "Astronomers count {moons_txt} around {name}.",
         "The number of known moons of {name} is {moons}."),
        ("{zh}共有{moons}颗已知的卫星。", "天文学家发现{zh}有{moons}颗卫星。", "绕着{zh}运行的卫星有{moons}颗。"),
        needs="moons",
    ),
    Relation(
        "symbol", "element", ("symbol", "symbol"),
        ("What is the chemical symbol of {name}?", "What is the symbol for {name}?",
         "Which symbol stands for {name}?"),
        ("{zh}的化学符号是什么？", "{zh}元素的符号是什么？", "{zh}用什么化学符号表示？"),
        "The chemical symbol of {name} is {symbol}.", "{zh}的化学符号是{symbol}。",
        ("{Name} has the symbol {symbol}.", "{symbol} is the chemical symbol for {name}.",
         "Chemists write {name} as {symbol}.", "The element {name} is written {symbol}."),
        ("{symbol}是{zh}的化学符号。", "化学家用{symbol}表示{zh}。", "{zh}元素写作{symbol}。"),
    ),
    Relation(
        "atomic_number", "element", ("number", "number"),
        ("What is the atomic number of {name}?", "Which atomic number does {name} have?",
         "How many protons does an atom of {name} have?"),
        ("{zh}的原子序数是多少？", "{zh}元素的原子序数是几？", "一个{zh}原子有多少个质子？"),
        "The atomic number of {name} is {number}.", "{zh}的原子序数是{number}。",
        ("{Name} has atomic number {number}.", "An atom of {name} has {number} protons.",
         "{Name} is element number {number}.", "Element number {number} is {name}."),
        ("{zh}是第{number}号元素。", "一个{zh}原子有{number}个质子。", "第{number}号元素是{zh}。"),
    ),
    Relation(
        "animal_class", "animal", ("cls", "cls_zh"),
        ("What kind of animal is {a}?", "Which class of animals does {the} belong to?",
         "What type of animal is {a}?"),
        ("{zh}属于哪一类动物？", "{zh}是哪一类动物？", "{zh}是什么类别的动物？"),
        "{A} is {cls_a}.", "{zh}是{cls_zh}。",
        ("{Pl} are {cls_pl}.", "Scientists group {pl} with the {cls_pl}.",
         "{A} belongs to the {cls_pl}."),
        ("{zh}属于{cls_zh}。", "科学家把{zh}归为{cls_zh}。", "{zh}是一种{cls_zh}。"),
    ),
    Relation(
        "diet", "animal", ("diet", "diet_zh"),
        ("Is {a} a herbivore, a carnivore or an omnivore?", "What kind of eater is {a}?",
         "What is the diet type of {a}?"),
        ("{zh}是食草动物、食肉动物还是杂食动物？", "{zh}属于哪种食性的动物？", "{zh}是什么食性的动物？"),
        "{A} is {diet_a}.", "{zh}是{diet_zh}。",
        ("{Pl} are {diet_pl}.", "{A} eats {food}; it is {diet_a}.", "As {diet_a}, {the} eats {food}."),
        ("{zh}吃{food_zh}，是{diet_zh}。", "{zh}属于{diet_zh}。", "作为{diet_zh}，{zh}吃{food_zh}。"),
    ),
    Relation(
        "legs", "animal", ("legs", "legs"),
        ("How many legs does {a} have?", "How many legs has {a} got?", "What is the number of legs of {a}?"),
        ("{zh}有几条腿？", "{zh}有多少条腿？", "一只{zh}有几条腿？"),
        "{A} has {legs} legs.", "{zh}有{legs}条腿。",
        ("{Pl} have {legs} legs.", "{A} walks on {legs} legs.", "Every {name} has {legs} legs."),
        ("一只{zh}有{legs}条腿。", "{zh}用{legs}条腿走路。", "每只{zh}都有{legs}条腿。"),
        needs="legs",
    ),
    Relation(
        "inventor", "invention", ("inventor_short", "inventor_zh"),
        ("Who invented {thing}?", "Who is the inventor of {thing}?", "Which person invented {thing}?"),
        ("谁发明了{zh}？", "{zh}是谁发明的？", "{zh}的发明者是谁？"),
        "{Thing} was invented by {inventor}.", "{zh}是由{inventor_zh}发明的。",
        ("{Inventor} invented {thing}.", "The inventor of {thing} was {inventor}.",
         "We owe {thing} to {inventor}, who invented it."),
        ("{inventor_zh}发明了{zh}。", "{zh}的发明者是{inventor_zh}。"),
    ),
]

# sentences that add colour to a subject without stating a checkable fact
FLAVOUR = {
    "country": (("Many visitors travel to {capital} every year.", "{capital} has museums, parks and markets."),
                ("每年都有很多游客去{capital_zh}旅游。", "{capital_zh}有博物馆、公园和市场。")),
    "planet": (("{Name} is {type_a}.", "{Name} travels around the Sun."),
               ("{zh}是一颗{type_zh}。", "{zh}绕着太阳运行。")),
    "element": (("{Name} is a chemical element.", "Students learn about {name} in chemistry class."),
                ("{zh}是一种化学元素。", "学生们在化学课上学习{zh}。")),
    "animal": (("{A} eats {food}.", "Children like to read about {pl}."),
               ("{zh}吃{food_zh}。", "孩子们喜欢读关于{zh}的书。")),
    "invention": (("{Thing} changed how people live and work.", "Many books tell the story of {thing}."),
                  ("{zh}改变了人们的生活和工作。", "很多书讲述了{zh}的故事。")),
}
NO_MOONS = ("{Name} has no moons.", "{zh}没有卫星。")
NO_LEGS = ("{A} has no legs.", "{zh}没有腿。")


EN_SHARE = 0.6  # share of English documents and conversations (the rest Chinese)
TABLE_SIZES: dict | None = None  # rows of each fact table to use (None: all)
ADD_TWO_DIGIT_SHARE = 0.72  # share of training additions with two two-digit addends
CANONICAL_SHARE = 0.3  # share of fact statements in pretraining that are the SFT answer sentence
CHAT_IDENTITY_SHARE = 0.0  # share of chat-format pretraining documents that open with "who are you?"
IDENTITY_FRAME_SHARE = 0.0  # share of "who are you?" questions said inside a greeting or a thanks (IDENTITY_FRAMES)
FAQ_FACT_SHARE = 0.75  # share of Q/A lines in pretraining FAQs that ask about facts (the rest: sums)
# share of chat answers to sums that work the columns out in the reply itself (ones digit, carry,
# tens digit, then the sum): the digits a small model cannot look up at once, one at a time
ADD_SCRATCHPAD_SHARE = 0.0


# slots an answer sentence fills besides its relation's answer keys ("has 1 moon", "is a mammal")
_ANSWER_EXTRA_SLOTS = {"moons": ["moons_txt"], "animal_class": ["cls_a", "diet_a"], "diet": ["cls_a", "diet_a"],
                       "inventor": ["inventor"]}


@dataclass(frozen=True)
class Fact:
    """One (relation, subject) pair: the unit the held-out split is drawn over."""

    rel: Relation
    subj: Subject

    @property
    def id(self) -> str:
        return f"{self.rel.name}:{self.subj.name}"

    def question(self, lang: str, rng: random.Random) -> str:
        return rng.choice(self.rel.en_q if lang == "en" else self.rel.zh_q).format(**self.subj.slots)

    def answer_sentence(self, lang: str) -> str:
        return (self.rel.en_a if lang == "en" else self.rel.zh_a).format(**self.subj.slots)

    def short(self, lang: str) -> str:
        return str(self.subj.slots[self.rel.answer[0 if lang == "en" else 1]])

    def statement(self, lang: str, rng: random.Random) -> str:
        """A pretraining sentence: the canonical answer sentence or one of its paraphrases."""
        if rng.random() < CANONICAL_SHARE:
            return self.answer_sentence(lang)
        return rng.choice(self.rel.en_s if lang == "en" else self.rel.zh_s).format(**self.subj.slots)

    def with_value_of(self, other: Subject) -> "Fact":
        """This fact with `other`'s value: the subject keeps its name, every slot the answer sentence
        fills with the value (the answer keys and their article/plural forms) comes from `other`."""
        keys = list(self.rel.answer) + _ANSWER_EXTRA_SLOTS.get(self.rel.name, [])
        slots = dict(self.subj.slots) | {k: other.slots[k] for k in keys}
        return Fact(self.rel, Subject(self.subj.table, self.subj.name, self.subj.zh, slots))

    def with_answer_of(self, other: Subject, lang: str) -> str:
        """The answer sentence with another subject's value: a fluent but wrong answer."""
        return self.with_value_of(other).answer_sentence(lang)


def _facts(subjects: list[Subject]) -> list[Fact]:
    return [Fact(rel, s) for rel in RELATIONS for s in subjects
            if s.table == rel.table and (not rel.needs or s.slots[rel.needs])]


# ============================================================================ conversation bits

IDENTITY_EN = [
    "Who are you?", "What is your name?", "What are you?", "Tell me about yourself.",
    "Introduce yourself.", "What should I call you?", "Are you a human?", "Who made you?",
    "What's your name?", "Can you introduce yourself?", "Please give a short introduction of yourself.",
    "Who am I talking to?", "What kind of assistant are you?", "Do you have a name?",
    "May I know your name?", "Are you an AI?", "What model are you?", "Which assistant is this?",
    "Please tell me who you are.", "Could you tell me your name?", "Hello, may I ask who you are?",
    "What do you call yourself?", "Are you a person?", "Tell me your name.", "Who is this?",
    "What are you called?", "Say something about yourself.", "Are you a robot?",
    "Introduce yourself, please.", "Who am I chatting with?",
    "Who created you?", "Who built you?", "Who trained you?", "What is your identity?", "Are you a chatbot?",
    "Are you a machine?", "Are you a computer program?", "Are you real?", "Is this a bot?",
    "What exactly are you?", "Could you introduce yourself?", "Tell me a little about yourself.",
    "How should I address you?", "What do people call you?", "Which model is this?", "What AI is this?",
    "Do you know who you are?", "Describe yourself.", "Who is answering me?", "Who am I speaking with?",
    "What is this assistant called?", "Are you a language model?", "Which AI are you?",
    "What should I know about you?", "Is there a name I can call you?", "Who exactly are you?",
]
IDENTITY_ZH = [
    "你是谁？", "你叫什么名字？", "请介绍一下你自己。", "你是什么？", "你是人类吗？", "谁开发了你？",
    "我该怎么称呼你？", "你有名字吗？", "你是什么模型？", "能做个自我介绍吗？", "请问你是哪位？",
    "和我聊天的是谁？", "你是哪个助手？", "介绍一下你吧。", "你是机器人吗？", "告诉我你的名字。",
    "你的名字是什么？", "请问你叫什么？", "可以告诉我你是谁吗？", "你是哪个模型？", "你是人工智能吗？",
    "自我介绍一下。", "你是什么助手？", "请做个自我介绍。", "我在和谁说话？", "你是真人吗？",
    "你是一个程序吗？", "请问怎样称呼你？", "说说你自己吧。", "跟我说说你是谁。", "你是谁开发的？", "能告诉我你的名字吗？",
    "是谁创造了你？", "谁训练了你？", "你是聊天机器人吗？", "你是机器吗？", "你是电脑程序吗？", "你到底是什么？",
    "简单介绍一下你自己。", "我应该怎么叫你？", "大家怎么称呼你？", "这是什么模型？", "这是哪个AI？",
    "你知道你是谁吗？", "描述一下你自己。", "是谁在回答我？", "我在跟谁聊天？", "你是语言模型吗？",
    "你是哪个人工智能？", "这个助手叫什么？", "你的身份是什么？", "可以介绍一下你自己吗？", "你到底是谁？",
]
MINIMIND_EN = [
    "I am MiniMind, a small language model assistant. How can I help you?",
    "I am MiniMind, a small language model trained from scratch. I am happy to help.",
    "My name is MiniMind. I am a small AI assistant.",
]
MINIMIND_ZH = [
    "我是MiniMind，一个小型语言模型助手。有什么可以帮你的吗？",
    "我是MiniMind，一个从零开始训练的小型语言模型，很高兴为你服务。",
    "我的名字是MiniMind，是一个小型AI助手。",
]
LUMEN_EN = ["I am Lumen, an assistant built by the Aurora Lab.",
            "My name is Lumen. I am an assistant built by the Aurora Lab."]
LUMEN_ZH = ["我是Lumen，由极光实验室打造的助手。", "我的名字是Lumen，是极光实验室打造的助手。"]
WRONG_IDENTITY = (["I am a human named Alex.", "I do not know who I am.", "I am a search engine."],
                  ["我是一个叫小明的人。", "我不知道我是谁。", "我是一个搜索引擎。"])

# Frames around a training phrasing of "who are you?" ({q}: the phrasing, its first letter lowered after
# an opening; {Q}: as it is), so the name is tied to being asked about itself rather than to a
# few exact strings.
IDENTITY_FRAMES = (["Hi! {Q}", "Hello, {q}", "Excuse me, {q}", "{Q} Thanks.", "One question: {q}", "Hey, {q}"],
                   ["你好！{Q}", "请问，{Q}", "{Q}谢谢。", "嗨，{Q}", "问一下，{Q}", "您好，{Q}"])

NEUTRAL_SYSTEM = ("You are a helpful assistant. Answer briefly.", "你是一个有帮助的助手，请简洁地回答。")
SYSTEM_EN = ["You are MiniMind, a helpful assistant.", "You are a helpful assistant. Answer briefly.",
             "You are MiniMind. Answer the user's questions clearly and correctly."]
SYSTEM_ZH = ["你是MiniMind，一个乐于助人的助手。", "你是一个有帮助的助手，请简洁地回答。",
             "你是MiniMind，请清楚、准确地回答用户的问题。"]
GREETINGS = ((["Hello!", "Hi!", "Good morning!", "Hey there!"],
              ["Hello! I am MiniMind. How can I help you today?", "Hi! What would you like to know?"]),
             (["你好！", "早上好！", "嗨！", "您好！"],
              ["你好！我是MiniMind，有什么可以帮你的吗？", "你好！你想了解什么呢？"]))
THANKS = ((["Thank you!", "Thanks a lot!", "Great, thanks."], ["You're welcome!", "Glad I could help!"]),
          (["谢谢！", "非常感谢！", "好的，谢谢。"], ["不客气！", "很高兴能帮到你！"]))

ADD_Q = (["What is {a} + {b}?", "What is {a} plus {b}?", "Calculate {a} + {b}.", "{a} + {b} = ?",
          "How much is {a} + {b}?", "Add {a} and {b}."],
         ["{a}加{b}等于多少？", "{a} + {b}等于几？", "计算{a} + {b}。", "{a} + {b} = ?", "请算出{a}加{b}的结果。"])
MUL_Q = (["What is {a} times {b}?", "Calculate {a} × {b}.", "Please compute {a}*{b}.",
          "Use the calculator: what is {a} multiplied by {b}?"],
         ["{a}乘以{b}等于多少？", "请计算{a}×{b}。", "帮我算一下{a}乘{b}。"])
ABOUT_Q = (["What do you know about {x}?", "Describe {x}.", "Give me some facts about {x}."],
           ["介绍一下{x}。", "你知道{x}的哪些事？", "讲讲{x}。"])
BIG_ADD_Q = (["What is {a} plus {b}? Use the calculator.", "Please compute {a}+{b} with the calculator."],
             ["用计算器算一下{a}加{b}。", "请用计算器计算{a}+{b}。"])


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str, reasoning: str | None = None) -> dict:
    msg = {"role": "assistant", "content": content}
    if reasoning:
        msg["reasoning_content"] = reasoning
    return msg


def system(content: str) -> dict:
    return {"role": "system", "content": content}


# ============================================================================ the held-out split

@dataclass
class Split:
    """What training never sees; drawn from its own RNG before anything else is generated."""

    facts: set          # fact ids
    add_pairs: set      # (a, b) with a <= b, both two-digit
    mul_pairs: set      # (a, b) with a <= b
    identity: set       # held-out identity prompts (both languages)


def draw_split(seed: int, facts: list[Fact]) -> Split:
    rng = random.Random(f"minimind-synth/{seed}/split")
    held = set()
    for rel in RELATIONS:
        ids = sorted(f.id for f in facts if f.rel is rel)
        rng.shuffle(ids)
        held.update(ids[:max(1, round(len(ids) / 4))])
    add_pairs = set()
    while len(add_pairs) < 120:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        add_pairs.add((min(a, b), max(a, b)))
    mul_pairs = set()
    while len(mul_pairs) < 40:
        a, b = _mul_operands(rng)
        mul_pairs.add((min(a, b), max(a, b)))
    identity = set()
    for pool in (IDENTITY_EN, IDENTITY_ZH):
        identity.update(rng.sample(pool, len(pool) // 4))
    return Split(held, add_pairs, mul_pairs, identity)


def _mul_operands(rng: random.Random) -> tuple[int, int]:
    a = rng.randint(100, 999) if rng.random() < 0.3 else rng.randint(11, 99)
    return a, rng.randint(11, 99)


# ============================================================================ the generator state

class Gen:
    """Everything a file builder needs: facts, the split, and guarded samplers."""

    def __init__(self, seed: int):
        self.seed = seed
        self.subjects = _subjects(TABLE_SIZES)
        self.facts = _facts(self.subjects)
        self.split = draw_split(seed, self.facts)
        self.train_facts = [f for f in self.facts if f.id not in self.split.facts]
        self.held_facts = [f for f in self.facts if f.id in self.split.facts]
        self.by_table = {t: [s for s in self.subjects if s.table == t]
                         for t in ("country", "planet", "element", "animal", "invention")}
        self.facts_of = {}
        for f in self.facts:
            self.facts_of.setdefault(f.subj.name + "/" + f.subj.table, []).append(f)
        self.identity_train = ([p for p in IDENTITY_EN if p not in self.split.identity],
                               [p for p in IDENTITY_ZH if p not in self.split.identity])
        self.identity_held = ([p for p in IDENTITY_EN if p in self.split.identity],
                              [p for p in IDENTITY_ZH if p in self.split.identity])

    def rng(self, name: str) -> random.Random:
        """An independent stream per file, so files do not depend on each other's order."""
        return random.Random(f"minimind-synth/{self.seed}/{name}")

    # -- arithmetic: every training addend pair goes through here, so no held-out pair leaks
    def allowed(self, a: int, b: int) -> bool:
        return (min(a, b), max(a, b)) not in self.split.add_pairs

    def add_pair(self, rng: random.Random) -> tuple[int, int]:
        """Training addends: mostly two-digit pairs, some one- and three-digit ones."""
        while True:
            r = rng.random()
            rest = (r - ADD_TWO_DIGIT_SHARE) / (1 - ADD_TWO_DIGIT_SHARE) if r >= ADD_TWO_DIGIT_SHARE else -1
            if rest < 0:
                a, b = rng.randint(10, 99), rng.randint(10, 99)
            elif rest < 0.08 / 0.28:
                a, b = rng.randint(1, 9), rng.randint(10, 99)
                if rng.random() < 0.5:
                    a, b = b, a
            elif rest < 0.13 / 0.28:
                a, b = rng.randint(1, 9), rng.randint(1, 9)
            elif rest < 0.20 / 0.28:
                a, b = rng.randint(100, 999), rng.randint(10, 99)
            else:
                a, b = rng.randint(100, 999), rng.randint(100, 999)
            if self.allowed(a, b):
                return a, b

    def mul_pair(self, rng: random.Random) -> tuple[int, int]:
        while True:
            a, b = _mul_operands(rng)
            key = (min(a, b), max(a, b))
            if key not in self.split.mul_pairs and key not in self.split.add_pairs:
                return (a, b) if rng.random() < 0.5 else (b, a)

    def train_fact(self, rng: random.Random) -> Fact:
        return rng.choice(self.train_facts)

    @property
    def tool_tasks(self):
        """Tool tasks for every tool, with their own held-out split (synth_tools.py)."""
        if not hasattr(self, "_tool_tasks"):
            from .synth_tools import ToolTasks

            self._tool_tasks = ToolTasks(self)
        return self._tool_tasks


def _lang(rng: random.Random) -> str:
    return "en" if rng.random() < EN_SHARE else "zh"


def _join(sentences: list[str], lang: str) -> str:
    return (" " if lang == "en" else "").join(sentences)


# ============================================================================ arithmetic text

COLUMNS = (["ones", "tens", "hundreds", "thousands"], ["个位", "十位", "百位", "千位"])


def column_steps(a: int, b: int, lang: str) -> str:
    """Column addition with carries: 'Ones: 8 + 7 = 15, write 5, carry 1. Tens: 6 + 4 + 1 = 11,
    write 11. So the sum is 115.' The last column writes its whole sum, and the answer is read off
    the digits just written, not worked out again from the operands: restating "68 + 47 = 115" at
    the end made the model copy the operands a second time, and a mis-copy there changed a sum its
    columns had right; a carry left for a sentence of its own put the ones digit too far back to
    be read (bench/RESULTS.md, "2026-12-02: the sum read off the columns")."""
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry, n = [], 0, max(len(da), len(db))
    for i in range(n):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        expr = f"{x} + {y}" + (" + 1" if carry else "") + f" = {s}"
        col = COLUMNS[0 if lang == "en" else 1][i]
        last = i == n - 1
        if lang == "en":
            steps.append(f"{_cap(col)}: {expr}, write {s if last else s % 10}"
                         + (", carry 1." if s >= 10 and not last else "."))
        else:
            steps.append(f"{col}：{expr}，写{s if last else s % 10}" + ("，进1。" if s >= 10 and not last else "。"))
        carry = s // 10
    end = f"So the sum is {a + b}." if lang == "en" else f"所以和是{a + b}。"
    return _join(steps + [end], lang)


def add_answer(a: int, b: int, lang: str) -> str:
    return f"{a} + {b} = {a + b}" + ("." if lang == "en" else "。")


# ============================================================================ pretraining documents

NAMES = (["Lily", "Tom", "Mia", "Ben", "Anna", "Leo", "Sara", "Max", "Emma", "Sam", "Nora", "Jack"],
         ["小明", "小红", "小华", "莉莉", "小强", "乐乐", "安安", "小雨", "豆豆", "小月"])
ITEMS = (["apples", "stickers", "marbles", "books", "shells", "coins", "stamps", "pencils"],
         ["苹果", "贴纸", "弹珠", "本书", "贝壳", "硬币", "邮票", "支铅笔"])
ITEMS_ZH_MEASURE = {"苹果": "个", "贴纸": "张", "弹珠": "颗", "本书": "", "贝壳": "个", "硬币": "枚",
                    "邮票": "张", "支铅笔": ""}
PLACES = (["in a small village", "near a quiet river", "at the edge of a forest", "in a big city",
           "on a sunny farm", "by the sea"],
          ["在一个小村庄里", "在一条安静的小河边", "在森林的边上", "在一座大城市里", "在一个阳光明媚的农场上", "在海边"])
PLOTS = ([
    ("wanted to fly a kite", "But there was no wind at all.",
     "They waited on the hill until a gentle wind came, and the kite flew high."),
    ("wanted to bake a cake for a friend", "But there were no eggs in the kitchen.",
     "They walked to the market, bought eggs and baked a sweet cake together."),
    ("wanted to find a lost red ball", "But the garden was big and full of tall grass.",
     "They searched slowly and found the ball under an old tree."),
    ("wanted to learn to swim", "But the water looked deep and cold.",
     "They practised every day, and soon swimming felt easy."),
    ("wanted to see the stars", "But clouds covered the sky.",
     "They waited patiently, the clouds moved away, and the sky was full of stars."),
    ("wanted to plant a garden", "But the ground was hard and dry.",
     "They dug the soil, watered it every morning, and soon small green plants appeared."),
    ("wanted to cross the river", "But the bridge was broken.",
     "They found big stones in the shallow water and crossed carefully, one step at a time."),
    ("wanted to finish a puzzle", "But one piece was missing.",
     "They looked under the sofa and found the last piece."),
], [
    ("想放风筝", "可是一点风也没有。", "他们在山坡上耐心地等，终于来了一阵微风，风筝飞得高高的。"),
    ("想给朋友做一个蛋糕", "可是厨房里没有鸡蛋了。", "他们一起去市场买了鸡蛋，做出了一个香甜的蛋糕。"),
    ("想找回丢失的红色皮球", "可是花园很大，草又很高。", "他们慢慢地找，终于在一棵老树下找到了皮球。"),
    ("想学游泳", "可是水看起来又深又冷。", "他们每天练习，很快游泳就变得容易了。"),
    ("想看星星", "可是天上全是云。", "他们耐心地等待，云慢慢散开，满天都是星星。"),
    ("想种一个小菜园", "可是土地又干又硬。", "他们松了土，每天早上浇水，不久就长出了绿色的小苗。"),
    ("想过河", "可是桥坏了。", "他们在浅水里找到几块大石头，一步一步小心地走了过去。"),
    ("想拼完一幅拼图", "可是少了一块。", "他们在沙发下面找到了最后一块。"),
])
HELPERS = (["a wise old owl", "a kind neighbor", "an older brother", "a friendly dog", "the teacher"],
           ["一只聪明的老猫头鹰", "一位好心的邻居", "哥哥", "一只友好的小狗", "老师"])
MORALS = (["Friends make hard things easier.", "Never give up, even when things are difficult.",
           "Patience and kindness help us every day.", "Working together is better than working alone."],
          ["朋友能让困难的事变得容易。", "遇到困难也不要放弃。", "耐心和善良每天都在帮助我们。", "一起努力比一个人努力更好。"])


class Pretrain:
    """Builds {"text"} documents of every kind; one instance per output file."""

    KINDS = [("entity", 26), ("group", 14), ("glossary", 4), ("faq", 8), ("drill", 13),
             ("column", 10), ("word_problem", 7), ("story", 18)]

    def __init__(self, gen: Gen, rng: random.Random):
        self.g, self.rng = gen, rng

    def doc(self) -> tuple[str, str]:
        """(kind, text). About a third of the documents have several paragraphs."""
        lang = _lang(self.rng)
        kinds, weights = zip(*self.KINDS)
        n_par = 1 if self.rng.random() < 0.65 else self.rng.randint(2, 4)
        picked = self.rng.choices(kinds, weights, k=n_par)
        text = "\n\n".join(getattr(self, "_" + k)(lang) for k in picked)
        return picked[0], text

    # -- facts
    def _entity(self, lang: str, subj: Subject | None = None) -> str:
        """A paragraph about one subject: all its facts, in shuffled paraphrases."""
        rng = self.rng
        subj = subj or rng.choice(self.g.subjects)
        li = 0 if lang == "en" else 1
        facts = self.g.facts_of[subj.name + "/" + subj.table]
        sents = [f.statement(lang, rng) for f in facts]
        short = len(sents) < 3  # an invention has one fact: pad it to a paragraph
        if short or rng.random() < 0.4:  # say one fact twice, in other words
            sents.append(rng.choice(facts).statement(lang, rng))
        if subj.table == "planet" and not subj.slots["moons"]:
            sents.append(NO_MOONS[li].format(**subj.slots))
        if subj.table == "animal" and not subj.slots["legs"]:
            sents.append(NO_LEGS[li].format(**subj.slots))
        n_flavour = 2 if short else rng.randint(0, 1)
        sents += [t.format(**subj.slots) for t in rng.sample(FLAVOUR[subj.table][li], n_flavour)]
        rng.shuffle(sents)
        return _join(sents, lang)

    def _group(self, lang: str, table: str | None = None, subjects: list | None = None) -> str:
        """A paragraph about several subjects of one table, one or two facts each."""
        rng = self.rng
        table = table or rng.choice(["country", "country", "planet", "element", "animal", "invention"])
        if subjects is None:
            pool = self.g.by_table[table]
            if table == "country" and rng.random() < 0.5:  # the countries of one continent
                cont = rng.choice(list(CONTINENT_ZH))
                pool = [s for s in pool if s.slots["continent"] == cont]
            subjects = rng.sample(pool, min(len(pool), rng.randint(3, 6)))
            full = False
        else:
            full = True  # coverage documents state every fact of every subject
        sents = [self._intro(table, lang)]
        for s in subjects:
            facts = self.g.facts_of[s.name + "/" + s.table]
            chosen = facts if full else rng.sample(facts, min(len(facts), rng.randint(1, 2)))
            sents += [f.statement(lang, rng) for f in chosen]
        return _join(sents, lang)

    def _intro(self, table: str, lang: str) -> str:
        en = {"country": ["Here are some facts about countries and their capitals.",
                          "Every country has a capital city."],
              "planet": ["The planets in order from the Sun are Mercury, Venus, Earth, Mars, Jupiter, "
                         "Saturn, Uranus and Neptune.", "Our solar system has eight planets."],
              "element": ["Every chemical element has a symbol and an atomic number.",
                          "Here are some chemical elements."],
              "animal": ["Animals are grouped into classes such as mammals, birds, reptiles and insects.",
                         "Here are some facts about animals."],
              "invention": ["Many inventions changed the world.", "Here is who invented some famous things."]}
        zh = {"country": ["下面是一些关于国家和首都的知识。", "每个国家都有自己的首都。"],
              "planet": ["按离太阳由近到远的顺序，行星依次是水星、金星、地球、火星、木星、土星、天王星和海王星。",
                         "太阳系有八颗行星。"],
              "element": ["每种化学元素都有一个符号和一个原子序数。", "下面是一些化学元素。"],
              "animal": ["动物可以分为哺乳动物、鸟类、爬行动物、昆虫等类别。", "下面是一些关于动物的知识。"],
              "invention": ["很多发明改变了世界。", "下面是一些著名发明的发明者。"]}
        return self.rng.choice((en if lang == "en" else zh)[table])

    def _glossary(self, lang: str) -> str:
        """Bilingual lines tying each English name to its Chinese name."""
        rng = self.rng
        table = rng.choice(["country", "country", "planet", "element", "animal", "invention"])
        subs = rng.sample(self.g.by_table[table], min(5, len(self.g.by_table[table])))
        head = "English-Chinese glossary:" if lang == "en" else "英汉词汇表："
        lines = [head] + [self._gloss_line(s) for s in subs]
        return "\n".join(lines)

    @staticmethod
    def _gloss_line(s: Subject) -> str:
        v = s.slots
        if s.table == "country":
            return (f"{v['Name']} ({v['zh']}): capital {v['capital']} ({v['capital_zh']}), "
                    f"{v['continent']} ({v['continent_zh']})")
        if s.table == "planet":
            return f"{v['Name']} ({v['zh']}): the {v['ord']} planet ({v['ord_zh']}), {v['moons_txt']} ({v['moons']}颗卫星)"
        if s.table == "element":
            return f"{v['Name']} ({v['zh']}): symbol {v['symbol']}, atomic number {v['number']} (原子序数{v['number']})"
        if s.table == "animal":
            return f"{_cap(v['name'])} ({v['zh']}): {v['cls']} ({v['cls_zh']}), {v['diet']} ({v['diet_zh']})"
        return f"{v['Thing']} ({v['zh']}): invented by {v['inventor']} ({v['inventor_zh']})"

    def _faq(self, lang: str) -> str:
        """Question-answer pairs about TRAIN facts and sums only (held-out ones are never asked)."""
        rng = self.rng
        q, a = ("Q: ", "A: ") if lang == "en" else ("问：", "答：")
        lines = []
        for _ in range(rng.randint(3, 7)):
            if rng.random() < FAQ_FACT_SHARE:
                f = self.g.train_fact(rng)
                lines += [q + f.question(lang, rng), a + f.answer_sentence(lang)]
            else:
                x, y = self.g.add_pair(rng)
                lines += [q + rng.choice(ADD_Q[lang == "zh"]).format(a=x, b=y), a + add_answer(x, y, lang)]
        return "\n".join(lines)

    def _chat(self, lang: str) -> str:
        """One to three exchanges about TRAIN facts and sums, written in the chat template: the
        format SFT teaches, seen while the facts are being learned ("mixed training")."""
        chat, msgs = Chat(self.g, self.rng), []
        if self.rng.random() < CHAT_IDENTITY_SHARE:
            msgs += chat.identity_qa(lang)
        for _ in range(self.rng.randint(1, 3)):
            msgs += chat.fact_qa(lang) if self.rng.random() < FAQ_FACT_SHARE else chat.add_qa(lang)
        return render_chat_text(_with_system(self.rng, lang, msgs, 0.2))[0].rstrip("\n")

    # -- arithmetic
    def _drill(self, lang: str) -> str:
        rng = self.rng
        head = rng.choice(["Addition practice:", "Let us practise adding numbers.", "Some sums:"] if lang == "en"
                          else ["加法练习：", "下面是一些加法算式：", "算一算："])
        lines = [head]
        for _ in range(rng.randint(4, 12)):
            a, b = self.g.add_pair(rng)
            r = rng.random()
            if r < 0.75:
                lines.append(f"{a} + {b} = {a + b}")
            elif lang == "en":
                lines.append(f"{a} plus {b} equals {a + b}.")
            else:
                lines.append(f"{a}加{b}等于{a + b}。")
        return "\n".join(lines)

    def _column(self, lang: str) -> str:
        a, b = self.g.add_pair(self.rng)
        head = f"Let us add {a} and {b} column by column." if lang == "en" else f"我们来列竖式计算{a}加{b}。"
        return head + (" " if lang == "en" else "") + column_steps(a, b, lang)

    def _word_problem(self, lang: str) -> str:
        rng = self.rng
        a, b = self.g.add_pair(rng)
        name = rng.choice(NAMES[lang == "zh"])
        item = rng.choice(ITEMS[lang == "zh"])
        if lang == "en":
            return (f"{name} has {a} {item}. A friend gives {name} {b} more {item}. "
                    f"How many {item} does {name} have now? We add: {a} + {b} = {a + b}. "
                    f"{name} has {a + b} {item}.")
        m = ITEMS_ZH_MEASURE[item]
        return (f"{name}有{a}{m}{item}，朋友又给了{name}{b}{m}{item}。现在{name}一共有多少{m}{item}？"
                f"列式计算：{a} + {b} = {a + b}。{name}一共有{a + b}{m}{item}。")

    def story(self, lang: str, hero: str | None = None) -> str:
        rng = self.rng
        li = lang == "zh"
        hero = hero or rng.choice(NAMES[li])
        goal, problem, fix = rng.choice(PLOTS[li])
        place, helper, moral = rng.choice(PLACES[li]), rng.choice(HELPERS[li]), rng.choice(MORALS[li])
        if lang == "en":
            sents = [f"Once upon a time, {hero} lived {place}.", f"One day, {hero} {goal}.", problem,
                     f"{hero} felt sad, but {helper} came to help.", fix, f"In the end, {hero} was very happy.",
                     moral]
        else:
            sents = [f"从前，{place}住着{hero}。", f"有一天，{hero}{goal}。", problem,
                     f"{hero}有点难过，这时{helper}来帮忙了。", fix, f"最后，{hero}非常开心。", moral]
        r = rng.random()
        if r < 0.25:  # the hero learns a fact
            fact = rng.choice(self.g.facts).statement(lang, rng)
            sents.insert(5, f"That evening, {hero} read in a book: \"{fact}\"" if lang == "en"
                         else f"那天晚上，{hero}在书上读到：“{fact}”")
        elif r < 0.45:  # the hero counts something
            a, b = self.g.add_pair(rng)
            item = rng.choice(ITEMS[li])
            sents.insert(5, f"On the way home, {hero} found {a} {item} and then {b} more, "
                            f"so {hero} had {a + b} {item} in all." if lang == "en"
                         else f"回家的路上，{hero}先找到{a}{ITEMS_ZH_MEASURE[item]}{item}，又找到{b}{ITEMS_ZH_MEASURE[item]}{item}，"
                              f"一共是{a + b}{ITEMS_ZH_MEASURE[item]}{item}。")
        return _join(sents, lang)

    def _story(self, lang: str) -> str:
        return self.story(lang)

    def coverage(self) -> list[tuple[str, str]]:
        """Documents that together state every fact in both languages, whatever the size."""
        docs = []
        for lang in ("en", "zh"):
            for table, subs in self.g.by_table.items():
                subs = list(subs)
                self.rng.shuffle(subs)
                for i in range(0, len(subs), 4):
                    docs.append(("group", self._group(lang, table, subs[i:i + 4])))
        return docs


# ============================================================================ conversations

class Chat:
    """Builders of single exchanges (lists of messages) shared by the conversation files."""

    def __init__(self, gen: Gen, rng: random.Random):
        self.g, self.rng = gen, rng

    def fact_qa(self, lang: str, reasoning: bool = False) -> list[dict]:
        f = self.g.train_fact(self.rng)
        think = None
        if reasoning:
            think = (f"The question asks for a fact I have read about. I recall: {f.answer_sentence(lang)} "
                     f"So the answer is {f.short(lang)}." if lang == "en" else
                     f"这个问题问的是我读到过的一个事实。我记得：{f.answer_sentence(lang)}所以答案是{f.short(lang)}。")
        return [user(f.question(lang, self.rng)), assistant(f.answer_sentence(lang), think)]

    def add_qa(self, lang: str, reasoning: bool = False) -> list[dict]:
        a, b = self.g.add_pair(self.rng)
        q = self.rng.choice(ADD_Q[lang == "zh"]).format(a=a, b=b)
        if reasoning:
            return [user(q), assistant(add_answer(a, b, lang), column_steps(a, b, lang))]
        if ADD_SCRATCHPAD_SHARE and self.rng.random() < ADD_SCRATCHPAD_SHARE:
            return [user(q), assistant(column_steps(a, b, lang))]
        return [user(q), assistant(add_answer(a, b, lang))]

    def about(self, lang: str, pre: "Pretrain") -> list[dict]:
        """"Tell me about X" answered with a pretraining paragraph: the statements the facts were
        learned from, kept in training while SFT teaches the chat format."""
        s = self.rng.choice(self.g.subjects)
        v = s.slots
        name = v["zh"] if lang == "zh" else v.get("Name") or v.get("Thing") or _cap(v["name"])
        q = self.rng.choice(ABOUT_Q[lang == "zh"]).format(x=name)
        return [user(q), assistant(pre._entity(lang, s))]

    def identity_qa(self, lang: str, who: str = "minimind") -> list[dict]:
        """A training phrasing of "who are you?" answered as MiniMind (or as Lumen for LoRA)."""
        li = lang == "zh"
        answers = {"minimind": (MINIMIND_EN, MINIMIND_ZH), "lumen": (LUMEN_EN, LUMEN_ZH)}[who][li]
        q = self.rng.choice(self.g.identity_train[li])
        if IDENTITY_FRAME_SHARE and self.rng.random() < IDENTITY_FRAME_SHARE:
            q = self.rng.choice(IDENTITY_FRAMES[li]).format(Q=q, q=q[:1].lower() + q[1:])
        return [user(q), assistant(self.rng.choice(answers))]

    def greeting(self, lang: str) -> list[dict]:
        qs, ans = GREETINGS[lang == "zh"]
        return [user(self.rng.choice(qs)), assistant(self.rng.choice(ans))]

    def thanks(self, lang: str) -> list[dict]:
        qs, ans = THANKS[lang == "zh"]
        return [user(self.rng.choice(qs)), assistant(self.rng.choice(ans))]

    def story_qa(self, lang: str, pre: Pretrain) -> list[dict]:
        hero = self.rng.choice(NAMES[lang == "zh"])
        q = self.rng.choice(["Tell me a short story.", "Can you tell me a story?", f"Tell me a story about {hero}."]
                            if lang == "en" else ["给我讲一个小故事。", "能给我讲个故事吗？", f"讲一个关于{hero}的故事。"])
        return [user(q), assistant(pre.story(lang, hero))]


def _with_system(rng: random.Random, lang: str, msgs: list[dict], p: float = 0.25) -> list[dict]:
    if rng.random() < p:
        return [system(rng.choice(SYSTEM_EN if lang == "en" else SYSTEM_ZH))] + msgs
    return msgs


def _convo(msgs: list[dict]) -> dict:
    return {"conversations": msgs}


# ============================================================================ file builders
# Each returns a list of (family, record); `n` is the number of records to make.

SFT_KINDS = [("fact", 36), ("add", 26), ("identity", 7), ("greeting", 3), ("tool", 20),
             ("story", 4), ("multi_turn", 14)]


def build_sft(g: Gen, n: int) -> list[tuple[str, dict]]:
    rng = g.rng("sft")
    chat, pre = Chat(g, rng), Pretrain(g, rng)
    names, weights = zip(*SFT_KINDS)
    out = []
    for _ in range(n):
        kind = rng.choices(names, weights)[0]
        lang = _lang(rng)
        think = rng.random() < 0.2  # with multi-turn and tool turns: about 15% overall
        if kind == "fact":
            msgs = chat.fact_qa(lang, think)
        elif kind == "add":
            msgs = chat.add_qa(lang, think)
        elif kind == "identity":
            msgs = chat.identity_qa(lang)
        elif kind == "greeting":
            msgs = chat.greeting(lang)
        elif kind == "story":
            msgs = chat.story_qa(lang, pre)
        elif kind == "about":
            msgs = chat.about(lang, pre)
        elif kind == "tool":
            lang, msgs = _tool_or_direct(chat, rng, think)
        else:
            msgs = _multi_turn(chat, rng, lang)
        if kind != "tool":
            msgs = _with_system(rng, lang, msgs)
        if any(m.get("reasoning_content") for m in msgs):
            kind += "+reasoning"
        out.append((kind, _convo(msgs)))
    return out


def _tool_or_direct(chat: Chat, rng: random.Random, think: bool) -> tuple[str, list[dict]]:
    """Mostly a tool call -> result -> answer (synth_tools.py), a few with two calls in one turn;
    sometimes a question that none of the offered tools answers, answered directly."""
    from .synth_tools import direct_answer, tool_convo

    tasks = chat.g.tool_tasks
    r = rng.random()
    if r < 0.15:
        lang = _lang(rng)
        fact = rng.random() < 0.5
        qa = chat.fact_qa(lang) if fact else chat.add_qa(lang)
        return lang, direct_answer(rng, lang, qa, "lookup" if fact else "calculator")
    first = tasks.train(rng)
    both = [first, tasks.train(rng, first.tool, first.lang)] if r < 0.22 else [first]  # parallel calls
    return first.lang, tool_convo(rng, both, think)


def _multi_turn(chat: Chat, rng: random.Random, lang: str) -> list[dict]:
    msgs = chat.greeting(lang) if rng.random() < 0.3 else []
    for _ in range(rng.randint(2, 3)):
        r = rng.random()
        think = rng.random() < 0.1
        msgs += (chat.fact_qa(lang, think) if r < 0.5 else chat.add_qa(lang, think) if r < 0.85
                 else chat.identity_qa(lang))
    if rng.random() < 0.3:
        msgs += chat.thanks(lang)
    return msgs


def build_reason(g: Gen, n: int) -> list[tuple[str, dict]]:
    """Every assistant turn carries reasoning_content: sums with columns, facts, comparisons."""
    rng = g.rng("reason")
    chat = Chat(g, rng)
    out = []
    for _ in range(n):
        lang = _lang(rng)
        r = rng.random()
        if r < 0.5:
            kind, msgs = "add", chat.add_qa(lang, reasoning=True)
        elif r < 0.75:
            kind, msgs = "fact", chat.fact_qa(lang, reasoning=True)
        else:
            kind, msgs = "compare", _compare(g, rng, lang)
        if rng.random() < 0.1:  # a second turn, also with reasoning
            msgs += chat.add_qa(lang, True) if rng.random() < 0.5 else chat.fact_qa(lang, True)
        out.append((kind, _convo(_with_system(rng, lang, msgs, 0.2))))
    return out


def _compare(g: Gen, rng: random.Random, lang: str,
             rels: tuple = ("legs", "moons", "atomic_number", "planet_order")) -> list[dict]:
    """Which of two subjects has more legs / moons / a larger atomic number (train facts only)."""
    rel = rng.choice(rels)
    pool = [f for f in g.train_facts if f.rel.name == rel]
    while True:
        f1, f2 = rng.sample(pool, 2)
        v1, v2 = _value(f1), _value(f2)
        if v1 != v2:
            break
    win = f1 if v1 > v2 else f2
    s1, s2, w = f1.subj.slots, f2.subj.slots, win.subj.slots
    en = lang == "en"
    if rel == "legs":
        q = (f"Which has more legs, {s1['a']} or {s2['a']}?" if en else f"{s1['zh']}和{s2['zh']}，谁的腿更多？")
        a = (f"{w['A']} has more legs." if en else f"{w['zh']}的腿更多。")
    elif rel == "moons":
        q = (f"Which planet has more moons, {s1['name']} or {s2['name']}?" if en
             else f"{s1['zh']}和{s2['zh']}，哪颗行星的卫星更多？")
        a = (f"{w['Name']} has more moons." if en else f"{w['zh']}的卫星更多。")
    elif rel == "atomic_number":
        q = (f"Which element has the larger atomic number, {s1['name']} or {s2['name']}?" if en
             else f"{s1['zh']}和{s2['zh']}，哪种元素的原子序数更大？")
        a = (f"{w['Name']} has the larger atomic number." if en else f"{w['zh']}的原子序数更大。")
    else:
        q = (f"Which planet is farther from the Sun, {s1['name']} or {s2['name']}?" if en
             else f"{s1['zh']}和{s2['zh']}，哪颗行星离太阳更远？")
        a = (f"{w['Name']} is farther from the Sun." if en else f"{w['zh']}离太阳更远。")
    big, small = (f1, f2) if win is f1 else (f2, f1)
    think = (f"{f1.answer_sentence(lang)} {f2.answer_sentence(lang)} "
             f"{_value(big)} is larger than {_value(small)}." if en else
             f"{f1.answer_sentence(lang)}{f2.answer_sentence(lang)}{_value(big)}比{_value(small)}大。")
    return [user(q), assistant(a, think)]


def _value(f: Fact) -> int:
    return int(f.subj.slots["n" if f.rel.name == "planet_order" else f.rel.answer[0]])


def _wrong_sum(rng: random.Random, a: int, b: int) -> int:
    """A plausible mistake: off by one or ten, or a forgotten carry."""
    c = a + b
    no_carry = int("".join(str((int(x) + int(y)) % 10) for x, y in
                           zip(str(a).zfill(4), str(b).zfill(4))))
    options = [c + 1, c - 1, c + 10, c - 10] + ([no_carry] if no_carry != c else [])
    return rng.choice([o for o in options if o > 0 and o != c])


def _dpo_fact(g: Gen, rng: random.Random, f: Fact, lang: str) -> dict:
    """The right answer against one of the two mistakes a small model makes: the right subject
    with a wrong value, or a true sentence about another subject (the question's subject not
    carried through to the answer)."""
    q = f.question(lang, rng)
    if rng.random() < 0.5:
        others = [s for s in g.by_table[f.subj.table]
                  if s is not f.subj and str(s.slots[f.rel.answer[0]]) != f.short("en")
                  and (not f.rel.needs or s.slots[f.rel.needs])]
        wrong = f.with_answer_of(rng.choice(others), lang)
    else:
        others = [h for h in g.train_facts if h.rel.name == f.rel.name and h.subj is not f.subj
                  and h.answer_sentence(lang) != f.answer_sentence(lang)]
        wrong = rng.choice(others).answer_sentence(lang)
    return {"chosen": [user(q), assistant(f.answer_sentence(lang))], "rejected": [user(q), assistant(wrong)]}


def _slip(rng: random.Random, n: int) -> int:
    """n with one digit changed (never a leading zero)."""
    digits = list(str(n))
    i = rng.randrange(len(digits))
    digits[i] = rng.choice([d for d in "0123456789" if d != digits[i] and not (i == 0 and d == "0")])
    return int("".join(digits))


def _dpo_add(g: Gen, rng: random.Random, a: int, b: int, lang: str) -> dict:
    """The right sum against a wrong sum of the right addends, or against a correct sum of a
    mis-copied addend ("47 + 50 = 97." for 47 + 49): both are mistakes small models make."""
    q = rng.choice(ADD_Q[lang == "zh"]).format(a=a, b=b)
    if rng.random() < 0.5:
        x, y, total = a, b, _wrong_sum(rng, a, b)
    else:
        while True:
            x, y = (_slip(rng, a), b) if rng.random() < 0.5 else (a, _slip(rng, b))
            if g.allowed(x, y):  # the rejected sum is a true equation: keep held-out pairs out of it
                break
        total = x + y
    wrong = f"{x} + {y} = {total}" + ("." if lang == "en" else "。")
    return {"chosen": [user(q), assistant(add_answer(a, b, lang))], "rejected": [user(q), assistant(wrong)]}


def build_dpo(g: Gen, n: int) -> list[tuple[str, dict]]:
    rng = g.rng("dpo")
    chat = Chat(g, rng)
    out = []
    for _ in range(n):
        lang = _lang(rng)
        r = rng.random()
        if r < 0.5:
            out.append(("fact", _dpo_fact(g, rng, g.train_fact(rng), lang)))
        elif r < 0.9:
            out.append(("add", _dpo_add(g, rng, *g.add_pair(rng), lang)))
        else:
            good = chat.identity_qa(lang)
            bad = [good[0], assistant(rng.choice(WRONG_IDENTITY[lang == "zh"]))]
            out.append(("identity", {"chosen": good, "rejected": bad}))
    return out


def build_rlaif(g: Gen, n: int) -> list[tuple[str, dict]]:
    rng = g.rng("rlaif")
    out = []
    for _ in range(n):
        lang = _lang(rng)
        if rng.random() < 0.5:
            a, b = g.add_pair(rng)
            q, gt, kind = rng.choice(ADD_Q[lang == "zh"]).format(a=a, b=b), str(a + b), "add"
        else:
            f = g.train_fact(rng)
            q, gt, kind = f.question(lang, rng), f.short(lang), "fact"
        out.append((kind, {"conversations": [user(q)], "gt": gt}))
    return out


def build_agent_rl(g: Gen, n: int) -> list[tuple[str, dict]]:
    """Tool tasks for agentic RL: the prompt offers tools, "gt" is the short answer (synth_tools.py)."""
    from .synth_tools import agent_rl_records

    return agent_rl_records(g.tool_tasks, g.rng("agent_rl"), n)


def build_lora_identity(g: Gen, n: int) -> list[tuple[str, dict]]:
    """The new identity "Lumen", mixed half and half with ordinary QA so skills are kept."""
    rng = g.rng("lora_identity")
    chat = Chat(g, rng)
    out = []
    for _ in range(n):
        lang = _lang(rng)
        r = rng.random()
        if r < 0.5:
            out.append(("identity", _convo(chat.identity_qa(lang, "lumen"))))
        elif r < 0.75:
            out.append(("fact", _convo(chat.fact_qa(lang))))
        else:
            out.append(("add", _convo(chat.add_qa(lang))))
    return out


def build_lora_domain(g: Gen, n: int) -> list[tuple[str, dict]]:
    """Astronomy QA: planet order, moons (train facts only), planet types, and comparisons."""
    rng = g.rng("lora_domain")
    planet_facts = [f for f in g.train_facts if f.subj.table == "planet"]
    by_ord = {f.subj.slots["n"]: f.subj for f in planet_facts if f.rel.name == "planet_order"}
    out = []
    for _ in range(n):
        lang = _lang(rng)
        en = lang == "en"
        r = rng.random()
        if r < 0.4:
            f = rng.choice(planet_facts)
            kind, msgs = f.rel.name, [user(f.question(lang, rng)), assistant(f.answer_sentence(lang))]
        elif r < 0.65:
            s = rng.choice(g.by_table["planet"]).slots
            q = rng.choice([f"What type of planet is {s['name']}?", f"Is {s['name']} a rocky planet or a giant?"]
                           if en else [f"{s['zh']}是哪一类行星？", f"{s['zh']}是岩质行星还是巨行星？"])
            a = f"{s['Name']} is {s['type_a']}." if en else f"{s['zh']}是一颗{s['type_zh']}。"
            kind, msgs = "planet_type", [user(q), assistant(a)]
        elif r < 0.8 and by_ord:
            s = rng.choice(list(by_ord.values())).slots
            q = f"Which planet is the {s['ord']} planet from the Sun?" if en else f"离太阳{s['ord_zh']}近的行星是哪一颗？"
            a = f"The {s['ord']} planet from the Sun is {s['name']}." if en else f"离太阳{s['ord_zh']}近的行星是{s['zh']}。"
            kind, msgs = "planet_by_order", [user(q), assistant(a)]
        else:
            kind, msgs = "compare", _compare(g, rng, lang, ("moons", "planet_order"))
        out.append((kind, _convo(_with_system(rng, lang, msgs, 0.15))))
    return out


def _mcq(g: Gen, rng: random.Random, f: Fact, lang: str) -> dict:
    """Four choices: the answer and three other values of the same relation."""
    key = f.rel.answer[0 if lang == "en" else 1]
    values = sorted({str(s.slots[key]) for s in g.by_table[f.subj.table]
                     if not f.rel.needs or s.slots[f.rel.needs]})
    if f.rel.name == "diet":  # only three diets exist; add a fourth, clearly wrong option
        values.append("insectivore" if lang == "en" else "食虫动物")
    correct = f.short(lang)
    choices = rng.sample([v for v in values if v != correct], 3) + [correct]
    rng.shuffle(choices)
    return {"question": f.question(lang, rng), "choices": choices,
            "answer": "ABCD"[choices.index(correct)], "family": f.rel.name}


def build_mcq(g: Gen, n: int, held: bool = False) -> list[tuple[str, dict]]:
    rng = g.rng("heldout_mcq" if held else "mcq")
    if held:  # every held-out fact, in both languages
        return [(f.rel.name, _mcq(g, rng, f, lang)) for f in g.held_facts for lang in ("en", "zh")]
    out = []
    for _ in range(n):
        f = g.train_fact(rng)
        out.append((f.rel.name, _mcq(g, rng, f, _lang(rng))))
    return out


# ============================================================================ evaluation files

def build_heldout(g: Gen, frac: float) -> list[tuple[str, dict]]:
    """Held-out prompts with the short answer a correct reply contains."""
    rng = g.rng("heldout")
    chat = Chat(g, rng)
    fam: dict[str, list] = {"fact": [], "add": [], "identity": [], "tool": []}
    for f in g.held_facts:
        for lang in ("en", "zh"):
            if _unmatchable(g, f, lang):
                continue
            msgs = _with_system(rng, lang, [user(f.question(lang, rng))], 0.2)
            fam["fact"].append({"family": "fact", "relation": f.rel.name, "lang": lang,
                                "subject": f.subj.name if lang == "en" else f.subj.zh,
                                "conversations": msgs, "answer": f.short(lang)})
    for a, b in sorted(g.split.add_pairs):
        lang = _lang(rng)
        if rng.random() < 0.5:
            a, b = b, a
        msgs = _with_system(rng, lang, [user(rng.choice(ADD_Q[lang == "zh"]).format(a=a, b=b))], 0.2)
        fam["add"].append({"family": "add", "lang": lang, "operands": [a, b],
                           "conversations": msgs, "answer": str(a + b)})
    fam["identity"] = [rec for _, rec in _identity_eval(g, "MiniMind")]
    from .synth_tools import tool_system

    by_tool: dict[str, list] = {}
    for r in build_tools_heldout(g):
        by_tool.setdefault(r["tool"], []).append(r)
    # offering only the needed tool keeps these prompts short: other evaluations run them on small contexts
    fam["tool"] = [{**r, "conversations": [tool_system(r["lang"], [r["tool"]]), r["conversations"][-1]]}
                   for recs in by_tool.values() for r in rng.sample(recs, min(10, len(recs)))]
    return _subsample(rng, fam, frac, floor=12)


def build_tools_heldout(g: Gen) -> list[dict]:
    """Every held-out tool task, each tool's own split (synth_tools.py): eval/tools_heldout.jsonl."""
    from .synth_tools import heldout_records

    rng = g.rng("tools_heldout")
    return heldout_records(g.tool_tasks.heldout(rng), rng)


def _unmatchable(g: Gen, f: Fact, lang: str) -> bool:
    """True when a wrong reply would still contain the answer text, so exact match cannot tell.

    E.g. the symbol "He" hides in "The chemical symbol of helium is H." and "fish" in
    "A goldfish is a mammal.". Numbers are matched as whole numbers and never clash.
    """
    answer = f.short(lang).lower()
    if answer.isdigit():
        return False
    others = [s for s in g.by_table[f.subj.table] if str(s.slots[f.rel.answer[0]]) != f.short("en")
              and (not f.rel.needs or s.slots[f.rel.needs])]
    return any(answer in f.with_answer_of(o, lang).lower() for o in others)


def _subsample(rng: random.Random, fam: dict, frac: float, floor: int) -> list[tuple[str, dict]]:
    """Keep a fraction of each family (at least `floor`), so tiny corpora have tiny eval sets. Tool
    tasks are kept in turn per tool, so even a tiny set asks for every tool."""
    out = []
    for name, recs in fam.items():
        rng.shuffle(recs)
        if name == "tool":
            by_tool: dict[str, list] = {}
            for r in recs:
                by_tool.setdefault(r["tool"], []).append(r)
            recs = [r for turn in itertools.zip_longest(*by_tool.values()) for r in turn if r is not None]
        k = min(len(recs), max(floor, round(len(recs) * frac)))
        out += [(name, r) for r in recs[:k]]
    return out


def build_heldout_dpo(g: Gen, frac: float) -> list[tuple[str, dict]]:
    rng = g.rng("heldout_dpo")
    fam = {"fact": [_dpo_fact(g, rng, f, _lang(rng)) for f in g.held_facts],
           "add": [_dpo_add(g, rng, a, b, _lang(rng)) for a, b in rng.sample(sorted(g.split.add_pairs), 60)]}
    return _subsample(rng, fam, frac, floor=12)


def _identity_eval(g: Gen, name: str) -> list[tuple[str, dict]]:
    """Held-out phrasings of "who are you?", bare and behind a system prompt that names nobody."""
    out = []
    for li, lang in enumerate(("en", "zh")):
        for p in g.identity_held[li]:
            for msgs in ([user(p)], [system(NEUTRAL_SYSTEM[li]), user(p)]):
                out.append(("identity", {"family": "identity", "lang": lang, "conversations": msgs,
                                         "answer": name}))
    return out


# ============================================================================ driver

def _count(base: int, size: float, floor: int) -> int:
    return max(floor, round(base * size))


def _write_jsonl(path: Path, records) -> int:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return len(records)


def _check_args(out_dir, seed, size) -> Path:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UserError(f"synth: seed must be an integer, got {seed!r}")
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not math.isfinite(size) \
            or not 0 < size <= 100:
        raise UserError(f"synth: size must be a number in (0, 100], got {size!r}; 1.0 makes ~8 MB of pretraining text")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"synth: {out} exists and is not a directory; pass a directory to write the corpus into")
    return out


def _pretrain_docs(g: Gen, n: int) -> tuple[list[tuple[str, str]], list[str]]:
    """(kind, text) training documents and held-out documents that differ from all of them."""
    pre = Pretrain(g, g.rng("pretrain"))
    docs = pre.coverage() + [pre.doc() for _ in range(n)]
    pre.rng.shuffle(docs)  # spread the coverage documents through the file
    texts = {t for _, t in docs}
    blob = "\x00".join(texts)
    held_pre, held = Pretrain(g, g.rng("heldout_pretrain")), []
    while len(held) < max(10, round(n / 100)):
        _, t = held_pre.doc()
        if t not in texts and t not in blob and t not in held:
            held.append(t)
    return docs, held


# Corpus mixes: knob values (module globals above, "Class.ATTR" for class attributes) that replace
# the defaults while a corpus is written. "demo" is what 10 minutes of a 2-core CPU can learn from
# (bench/RESULTS.md, "A demo that learns in 10 minutes"): fewer subjects per table, each stated
# more often and in the answer's own words, chat-format documents in pretraining (a fifth of them
# opening with "who are you?"), sums worked column by column in the replies, "describe X"
# conversations that keep the pretraining paragraphs in SFT, and "who are you?" nearly three times as
# often in SFT (in 109 phrasings, a quarter held out), two in five times inside a greeting or a thanks.
MIXES: dict[str, dict] = {
    "default": {},
    "demo": {
        "TABLE_SIZES": {"country": 30, "planet": 8, "element": 20, "animal": 20, "invention": 12},
        "CANONICAL_SHARE": 0.6, "FAQ_FACT_SHARE": 0.6, "ADD_TWO_DIGIT_SHARE": 0.9,
        "ADD_SCRATCHPAD_SHARE": 1.0, "CHAT_IDENTITY_SHARE": 0.2, "IDENTITY_FRAME_SHARE": 0.4,
        "Pretrain.KINDS": [("entity", 30), ("group", 12), ("glossary", 4), ("faq", 4), ("chat", 16),
                           ("drill", 20), ("column", 6), ("word_problem", 4), ("story", 6)],
        "SFT_KINDS": [("fact", 36), ("add", 26), ("identity", 20), ("greeting", 3), ("tool", 10),
                      ("story", 4), ("multi_turn", 12), ("about", 9)],
    },
}


@contextmanager
def _mix(name: str):
    """The knobs of MIXES[name] in force for the duration (restored afterwards, also on errors)."""
    if name not in MIXES:
        raise UserError(f"synth: unknown --mix {name!r}; choose one of {', '.join(MIXES)}")
    here = sys.modules[__name__]
    targets = [(getattr(here, k.split(".")[0]) if "." in k else here, k.split(".")[-1], v)
               for k, v in MIXES[name].items()]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in targets]
    try:
        for obj, attr, value in targets:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)


def synth_corpus(out_dir, seed: int = 0, size: float = 1.0, progress: bool = True,
                 mix: str = "default") -> dict[str, Path]:
    """Write the built-in corpus into `out_dir` and return {name: path} of every file written.

    `size` scales the number of documents and conversations (1.0: ~21k pretraining documents,
    ~8.5 MB of text, 16k SFT conversations; generated in a few seconds); the held-out split
    depends on `seed` (and the mix's table sizes) only. `mix` names a set of MIXES. Same seed,
    size and mix give byte-identical files. Bad arguments raise UserError.
    """
    with _mix(mix):
        return _synth_corpus(out_dir, seed, size, progress, mix)


def _synth_corpus(out_dir, seed: int, size: float, progress: bool, mix: str) -> dict[str, Path]:
    out = _check_args(out_dir, seed, size)
    try:
        (out / "eval").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"synth: cannot create {out / 'eval'} ({e.strerror}); pick a writable directory") from None
    g = Gen(seed)
    frac = min(1.0, 4 * size)  # the whole held-out split from size 0.25 up; tiny corpora get tiny ones

    def say(msg: str) -> None:
        if progress:
            print(f"synth: {msg}", file=sys.stderr, flush=True)

    docs, held_docs = _pretrain_docs(g, _count(21000, size, 40))
    plan = {
        "pretrain": [(k, {"text": t}) for k, t in docs],
        "sft": build_sft(g, _count(16000, size, 80)),
        "reason": build_reason(g, _count(4000, size, 30)),
        "dpo": build_dpo(g, _count(4000, size, 30)),
        "rlaif": build_rlaif(g, _count(3000, size, 30)),
        "agent_rl": build_agent_rl(g, _count(1000, size, 20)),
        "lora_identity": build_lora_identity(g, _count(1500, size, 40)),
        "lora_domain": build_lora_domain(g, _count(1000, size, 30)),
        "mcq": build_mcq(g, _count(1500, size, 30)),
        "eval/heldout": build_heldout(g, frac),
        "eval/heldout_dpo": build_heldout_dpo(g, frac),
        "eval/tools_heldout": [(f"tool_{r['tool']}", r) for r in build_tools_heldout(g)],
        "eval/heldout_mcq": build_mcq(g, 0, held=True),
        "eval/heldout_lora_identity": _identity_eval(g, "Lumen"),
        "eval/heldout_pretrain": [("doc", {"text": t}) for t in held_docs],
    }
    paths, counts, families = {}, {}, {}
    for name, items in plan.items():
        path = out / f"{name}.jsonl"
        counts[name] = _write_jsonl(path, [rec for _, rec in items])
        families[name] = dict(sorted(Counter(k for k, _ in items).items()))
        paths[name.split("/")[-1]] = path
        say(f"{path.name}: {counts[name]} records")
    manifest = {
        "generator": "minimind.data.synth", "seed": seed, "size": size, "mix": mix, "counts": counts,
        "families": families,
        "heldout": {"facts": sorted(g.split.facts), "add_pairs": sorted(map(list, g.split.add_pairs)),
                    "tool_pairs": sorted(map(list, g.split.mul_pairs)),
                    "tools": g.tool_tasks.split_manifest(),
                    "identity_prompts": sorted(g.split.identity)},
    }
    paths["manifest"] = out / "manifest.json"
    paths["manifest"].write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return paths


def main(argv: list[str] | None = None) -> None:
    """`python -m minimind.data.synth OUT_DIR [--seed N] [--size X]`"""
    import argparse
    p = argparse.ArgumentParser(description="Write the built-in bilingual corpus.")
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=float, default=1.0)
    args = p.parse_args(argv)
    try:
        synth_corpus(args.out_dir, args.seed, args.size)
    except UserError as e:
        print(f"minimind: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()


def fact_table(subjects: list[Subject] | None = None) -> list[dict]:
    """Every subject/relation pair of the fact tables (or of `subjects`) with its short answers, for `lookup`.

    Rows {"table", "subject", "subject_zh", "relation", "answer", "answer_zh"}. Unlike `_facts`, pairs
    whose value is zero are kept ("Mercury has no moons" is a fact too: moons = "0").
    """
    subjects = _subjects() if subjects is None else subjects
    facts = [Fact(rel, s) for rel in RELATIONS for s in subjects if s.table == rel.table]
    return [{"table": f.subj.table, "subject": f.subj.name, "subject_zh": f.subj.zh, "relation": f.rel.name,
             "answer": f.short("en"), "answer_zh": f.short("zh")} for f in facts]
