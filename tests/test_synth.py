"""Tests of the built-in corpus generator: formats, determinism, size, and the held-out split.

The held-out checks parse the written files with their own regular expressions instead of
asking the generator, so a leak introduced anywhere (a new template, a story, a tool prompt)
shows up here.
"""

import json
import random
import re
from collections import Counter
from pathlib import Path

import pytest

from minimind import tools
from minimind.data import invented
from minimind.data import synth as synth_mod
from minimind.data.synth import synth_corpus
from minimind.data.synth_tools import TOOL_NAMES
from minimind.errors import UserError

TRAIN_FILES = ["pretrain", "sft", "reason", "dpo", "rlaif", "agent_rl", "lora_identity",
               "lora_domain", "mcq"]
EVAL_FILES = ["heldout", "heldout_dpo", "heldout_mcq", "heldout_lora_identity", "heldout_pretrain", "tools_heldout"]
ROLES = {"system", "user", "assistant", "tool"}
CJK = re.compile(r"[\u4e00-\u9fff]")
# "a + b", "a+b", "a plus b", "a 加 b", "add a and b", "a 与 b": only the first number is consumed,
# so "12 + 34 + 56" yields both (12, 34) and (34, 56)
ADD_FORM = re.compile(r"(?<!\d)(\d+)(?=\s*(?:\+|＋|plus|加上|加|and|与|和)\s*(\d+)(?!\d))")
EQUATION = re.compile(r"(?<![\d+] )(?<!\d)(\d+) \+ (\d+) = (\d+)(?!\d)")
SENTENCE_END = re.compile(r"\n|(?<=[.?!])\s|[。？！]")


def _read(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _strings(obj):
    """Every string inside a parsed JSON value (message contents, gt, choices, tools ...)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)


def _make(tmp_path_factory, mix: str) -> dict:
    out = tmp_path_factory.mktemp("synth")
    paths = synth_corpus(out, seed=0, size=0.15, progress=False, mix=mix)
    recs = {name: _read(p) for name, p in paths.items() if name != "manifest"}
    manifest = json.loads(paths["manifest"].read_text(encoding="utf-8"))
    train_strings = [s for name in TRAIN_FILES for r in recs[name] for s in _strings(r)]
    return {"paths": paths, "recs": recs, "manifest": manifest, "train_strings": train_strings,
            "train_blob": "\n\x00\n".join(train_strings)}


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return _make(tmp_path_factory, "default")


@pytest.fixture(scope="module")
def demo_mix(tmp_path_factory):
    return _make(tmp_path_factory, "demo")


@pytest.fixture(params=["default", "demo"])
def any_mix(request):
    """The held-out rules and the arithmetic hold for every corpus mix."""
    return request.getfixturevalue("synth" if request.param == "default" else "demo_mix")


# ----------------------------------------------------------------------------- files and formats

def test_writes_every_file_and_manifest(synth):
    paths = synth["paths"]
    assert set(paths) == set(TRAIN_FILES) | set(EVAL_FILES) | {"manifest"}
    for name, p in paths.items():
        assert p.exists() and p.stat().st_size > 0, name
    assert paths["heldout"].parent.name == "eval"
    m = synth["manifest"]
    assert (m["seed"], m["size"]) == (0, 0.15)
    for name, n in m["counts"].items():
        assert n == len(synth["recs"][name.split("/")[-1]]), name
        assert sum(m["families"][name].values()) == n, name


def _check_messages(msgs, where):
    assert isinstance(msgs, list) and msgs, where
    for i, m in enumerate(msgs):
        assert m["role"] in ROLES, where
        assert isinstance(m["content"], str), where
        assert set(m) <= {"role", "content", "reasoning_content", "tools", "tool_calls"}, where
        if m["role"] == "system":
            assert i == 0, f"{where}: system message not first"
        if "tools" in m:
            assert m["role"] == "system", where
            offered = json.loads(m["tools"])
            assert 1 <= len(offered) <= 3, where
            for t in offered:  # the schemas are exactly those of the tool set
                assert t == tools.schemas([t["function"]["name"]])[0], where
        if "tool_calls" in m:
            assert m["role"] == "assistant" and m["content"] == "", where
            calls = json.loads(m["tool_calls"])
            names = {t["function"]["name"] for t in json.loads(msgs[0]["tools"])}
            for c in calls:  # every call is valid for the offered schemas
                assert tools.check(c, offered=names) is None, (where, c)
            assert [x["role"] for x in msgs[i + 1:i + 1 + len(calls)]] == ["tool"] * len(calls), \
                f"{where}: a tool call must be followed by its result"
        if "reasoning_content" in m:
            assert m["role"] == "assistant" and m["reasoning_content"].strip(), where
    # after an optional system prompt, user and assistant alternate (tool results sit inside)
    turns = [m["role"] for m in msgs if m["role"] != "system" and m["role"] != "tool"]
    turns = [r for i, r in enumerate(turns) if not (r == "assistant" and i and turns[i - 1] == "assistant")]
    assert turns[::2] == ["user"] * len(turns[::2]) and turns[1::2] == ["assistant"] * len(turns[1::2]), where


def test_conversation_files_have_the_sft_schema(synth):
    recs = synth["recs"]
    for name in ("sft", "reason", "lora_identity", "lora_domain"):
        assert recs[name], name
        for i, r in enumerate(recs[name]):
            assert set(r) == {"conversations"}, (name, i)
            _check_messages(r["conversations"], f"{name}:{i + 1}")
            assert r["conversations"][-1]["role"] == "assistant", (name, i)
            assert r["conversations"][-1]["content"].strip(), (name, i)
    for i, r in enumerate(recs["reason"]):
        for m in r["conversations"]:
            if m["role"] == "assistant":
                assert m.get("reasoning_content"), f"reason:{i + 1}: assistant turn without reasoning"


def test_other_formats(synth):
    recs = synth["recs"]
    for name in ("pretrain", "heldout_pretrain"):
        for r in recs[name]:
            assert set(r) == {"text"} and len(r["text"]) > 10
    for name in ("dpo", "heldout_dpo"):
        for r in recs[name]:
            assert set(r) == {"chosen", "rejected"}
            for side in (r["chosen"], r["rejected"]):
                _check_messages(side, name)
                assert [m["role"] for m in side] == ["user", "assistant"]
            assert r["chosen"][0] == r["rejected"][0]  # same prompt
            assert r["chosen"][1]["content"] != r["rejected"][1]["content"]
    for r in recs["rlaif"]:
        assert set(r) == {"conversations", "gt"} and r["gt"].strip()
        assert [m["role"] for m in r["conversations"]] == ["user"]
    for r in recs["agent_rl"]:
        assert [m["role"] for m in r["conversations"]] == ["system", "user"]
        _check_messages(r["conversations"], "agent_rl")
        assert "tools" in r["conversations"][0] and r["gt"].strip() and r["tool"] in TOOL_NAMES
        offered = [t["function"]["name"] for t in json.loads(r["conversations"][0]["tools"])]
        assert r["tool"] in offered
    for name in ("mcq", "heldout_mcq"):
        for r in recs[name]:
            assert set(r) == {"question", "choices", "answer", "family"}
            assert len(r["choices"]) == 4 and len(set(r["choices"])) == 4
            assert r["answer"] in "ABCD" and len(r["answer"]) == 1
    for name in ("heldout", "heldout_lora_identity"):
        for r in recs[name]:
            _check_messages(r["conversations"], name)
            assert r["conversations"][-1]["role"] == "user"
            assert isinstance(r["answer"], str) and 0 < len(r["answer"]) <= 30


def test_heldout_families_and_answers(synth):
    recs = synth["recs"]["heldout"]
    fams = {r["family"] for r in recs}
    assert {"fact", "add", "identity", "tool"} <= fams
    for r in recs:
        if r["family"] == "add":
            a, b = r["operands"]
            assert 10 <= a <= 99 and 10 <= b <= 99 and r["answer"] == str(a + b)
            assert str(a) in r["conversations"][-1]["content"]
        if r["family"] == "tool":
            assert _states(r["call"]["name"], tools.execute(r["call"]), r["answer"])
            # only the needed tool: short prompts for evaluations on small contexts
            assert [t["function"]["name"] for t in json.loads(r["conversations"][0]["tools"])] == [r["tool"]]
        if r["family"] == "identity":
            assert r["answer"] == "MiniMind"
        question = r["conversations"][-1]["content"]
        if r["family"] == "fact" and not r["answer"].isdigit() and " or " not in question and "还是" not in question:
            # the answer cannot be read off the question ("fish" in "goldfish", "he" in "helium")
            assert r["answer"].lower() not in question.lower(), r
    assert {r["answer"] for r in synth["recs"]["heldout_lora_identity"]} == {"Lumen"}


def test_full_size_has_enough_heldout_records(tmp_path):
    recs = _read(synth_corpus(tmp_path, seed=3, size=1.0, progress=False)["heldout"])
    per = {f: sum(r["family"] == f for r in recs) for f in ("fact", "add", "identity", "tool")}
    assert 200 <= len(recs) <= 400
    assert per["fact"] >= 100 and per["add"] >= 100 and per["identity"] > 0 and per["tool"] > 0
    held = _read(tmp_path / "eval" / "tools_heldout.jsonl")
    per_tool = Counter(r["tool"] for r in held)
    assert set(per_tool) == set(TOOL_NAMES) and min(per_tool.values()) >= 24, per_tool
    assert per_tool["lookup"] >= 80  # both languages of the held-out facts


# ----------------------------------------------------------------------------- determinism, size

def _file_bytes(paths):
    return {name: p.read_bytes() for name, p in paths.items()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _file_bytes(synth_corpus(tmp_path / "a", seed=7, size=0.1, progress=False))
    b = _file_bytes(synth_corpus(tmp_path / "b", seed=7, size=0.1, progress=False))
    c = _file_bytes(synth_corpus(tmp_path / "c", seed=8, size=0.1, progress=False))
    assert a == b
    for name in ("pretrain", "sft", "dpo", "heldout", "manifest"):
        assert a[name] != c[name], name
    held = lambda raw: json.loads(raw)["heldout"]["add_pairs"]  # noqa: E731
    assert held(a["manifest"]) != held(c["manifest"])  # the split follows the seed


def test_heldout_split_does_not_depend_on_size(tmp_path):
    small = json.loads(synth_corpus(tmp_path / "s", 5, 0.05, False)["manifest"].read_text())
    big = json.loads(synth_corpus(tmp_path / "b", 5, 0.2, False)["manifest"].read_text())
    assert small["heldout"] == big["heldout"]


def test_size_scales_counts(tmp_path):
    tiny = json.loads(synth_corpus(tmp_path / "t", 0, 0.05, False)["manifest"].read_text())["counts"]
    small = json.loads(synth_corpus(tmp_path / "s", 0, 0.1, False)["manifest"].read_text())["counts"]
    big = json.loads(synth_corpus(tmp_path / "b", 0, 0.2, False)["manifest"].read_text())["counts"]
    for name in ("pretrain", "sft", "reason", "dpo", "rlaif"):
        assert 1.6 < big[name] / small[name] < 2.4, name
    assert tiny["pretrain"] < 1500 and tiny["sft"] < 1000
    assert (tmp_path / "t" / "pretrain.jsonl").stat().st_size < 1_000_000


def test_bad_arguments_are_user_errors(tmp_path):
    for size in (0, -1, float("nan"), "big"):
        with pytest.raises(UserError, match="size"):
            synth_corpus(tmp_path / "x", size=size, progress=False)
    with pytest.raises(UserError, match="seed"):
        synth_corpus(tmp_path / "x", seed=1.5, progress=False)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(UserError, match="not a directory"):
        synth_corpus(tmp_path / "file", size=0.05, progress=False)


# ----------------------------------------------------------------------------- content

def test_both_languages_everywhere(synth):
    recs = synth["recs"]
    texts = [r["text"] for r in recs["pretrain"]]
    zh_share = sum(bool(CJK.search(t)) for t in texts) / len(texts)
    assert 0.25 < zh_share < 0.6  # about 60/40 English/Chinese
    assert sum(not CJK.search(t) for t in texts) > 0.35 * len(texts)
    for name in ("sft", "reason", "dpo", "rlaif", "lora_identity", "lora_domain", "heldout"):
        users = [s for r in recs[name] for s in _strings(r.get("conversations") or r.get("chosen"))]
        assert any(CJK.search(s) for s in users), name
        assert any(re.search(r"[A-Za-z]{4}", s) and not CJK.search(s) for s in users), name


def test_sums_and_tool_results_are_correct(any_mix):
    recs = any_mix["recs"]
    n = 0
    for name in ("pretrain", "sft", "reason", "rlaif", "lora_identity", "heldout_pretrain"):
        for r in recs[name]:
            for s in _strings(r):
                for a, b, c in EQUATION.findall(s):
                    assert int(a) + int(b) == int(c), (name, s)
                    n += 1
    assert n > 1000
    kinds = Counter()
    for r in recs["dpo"]:
        chosen = EQUATION.findall(r["chosen"][1]["content"])
        for a, b, c in chosen:
            assert int(a) + int(b) == int(c)
        for a, b, c in EQUATION.findall(r["rejected"][1]["content"]):
            # a wrong sum of the asked addends, or a true sum of a mis-copied addend
            wrong_sum, miscopied = int(a) + int(b) != int(c), (a, b) != chosen[0][:2]
            assert wrong_sum != miscopied, r
            kinds[wrong_sum] += 1
    assert min(kinds.values()) > 0.3 * sum(kinds.values())  # both kinds of mistake, about half each
    calls = Counter()
    for r in recs["sft"]:
        msgs = r["conversations"]
        for i, m in enumerate(msgs):
            if "tool_calls" in m:
                batch = json.loads(m["tool_calls"])
                final = msgs[i + 1 + len(batch)]
                assert final["role"] == "assistant" and not final.get("tool_calls")
                for k, call in enumerate(batch):
                    result = msgs[i + 1 + k]["content"]
                    assert result == tools.execute(call)  # the real tool's answer
                    assert _states(call["name"], result, final["content"]), (result, final["content"])
                    question, args = msgs[i - 1]["content"].lower(), call["arguments"]
                    if call["name"] == "calculator":
                        copied = re.findall(r"\d+", args["expression"])
                    elif call["name"] == "lookup":
                        copied = [args["subject"]]
                    else:
                        copied = [v for k, v in args.items() if k != "unit"]
                    for v in copied:  # the arguments are copied from the question
                        assert str(v).lower() in question, (call, question)
                    calls[call["name"]] += 1
    assert set(calls) == set(TOOL_NAMES) and min(calls.values()) > 5, calls


def _states(tool, result, text):
    """Whether `text` states the key part of a tool's `result` (this test's own reading of the results)."""
    pattern = {"unit_converter": r"= (-?[\d.e+-]+) ", "exchange_rate": r"= ([\d.e+]+) ", "lookup": r"(?:: |：)(.+)$",
               "current_time": r"(\d\d:\d\d)", "weather": r"(-?[\d.]+) °[CF]"}.get(tool)
    key = result if pattern is None else re.search(pattern, result).group(1)
    return key is not None and key in text


def test_sft_mix(synth):
    sft = [r["conversations"] for r in synth["recs"]["sft"]]
    with_reasoning = sum(any(m.get("reasoning_content") for m in c) for c in sft) / len(sft)
    assert 0.08 < with_reasoning < 0.25
    assert any(len([m for m in c if m["role"] == "user"]) >= 2 for c in sft)  # multi-turn
    assert any(c[0]["role"] == "system" and "tools" not in c[0] for c in sft)
    answers = [c[-1]["content"] for c in sft]
    assert any("I am MiniMind" in a for a in answers) and any("我是MiniMind" in a for a in answers)
    lumen = [r["conversations"][-1]["content"] for r in synth["recs"]["lora_identity"]]
    share = sum("Lumen" in a for a in lumen) / len(lumen)
    assert 0.35 < share < 0.65  # half identity, half ordinary questions
    assert any("我是Lumen" in a for a in lumen) and any("I am Lumen" in a for a in lumen)


# ----------------------------------------------------------------------------- held-out split

def _heldout_pairs(synth):
    return {tuple(sorted(p)) for p in synth["manifest"]["heldout"]["add_pairs"]}


def test_rule1_heldout_addition_pairs_never_in_training(any_mix):
    held = _heldout_pairs(any_mix)
    assert len(held) >= 100
    eval_pairs = {tuple(sorted(r["operands"])) for r in any_mix["recs"]["heldout"] if r["family"] == "add"}
    assert eval_pairs and eval_pairs <= held
    seen = set()
    for s in any_mix["train_strings"]:
        for m in ADD_FORM.finditer(s):
            a, b = int(m.group(1)), int(m.group(2))
            if 10 <= a <= 99 and 10 <= b <= 99:
                seen.add((min(a, b), max(a, b)))
        # any form: two two-digit numbers and their sum in one sentence ("had 23 ... 48 more ... 71")
        for sent in SENTENCE_END.split(s):
            nums = [int(x) for x in re.findall(r"(?<!\d)\d+(?!\d)", sent)]
            for i, a in enumerate(nums):
                for j in range(i + 1, len(nums)):
                    b = nums[j]
                    if 10 <= a <= 99 and 10 <= b <= 99 and a + b in nums[j + 1:]:
                        assert (min(a, b), max(a, b)) not in held, sent
    assert len(seen) > 300  # the scan does find the training sums
    assert not seen & held, sorted(seen & held)[:5]


def test_rule2_heldout_fact_questions_never_in_training(any_mix):
    recs, blob = any_mix["recs"], any_mix["train_blob"]
    prompts = {r["question"] for r in recs["heldout_mcq"]}
    prompts |= {r["conversations"][-1]["content"] for r in recs["heldout"] if r["family"] in ("fact", "identity")}
    # fact questions of heldout_dpo (its sums are rule 1's business: "159 + 62" contains "59 + 62")
    prompts |= {r["chosen"][0]["content"] for r in recs["heldout_dpo"]
                if not re.search(r"\d", r["chosen"][0]["content"])}
    assert len(prompts) > 100
    leaked = [p for p in prompts if p in blob]
    assert not leaked, leaked[:5]
    # the same check does see training questions, so it is not vacuous
    train_q = [r["question"] for r in recs["mcq"]]
    assert sum(q in blob for q in train_q) > 0.9 * len(train_q)  # mcq.jsonl itself is training data
    sft_blob = "\n".join(s for r in recs["sft"] for s in _strings(r))
    assert sum(q in sft_blob for q in set(train_q)) > 0.3 * len(set(train_q))


def test_rule3_heldout_fact_answers_are_in_pretraining(any_mix):
    recs = any_mix["recs"]
    docs = [r["text"] for r in recs["pretrain"]]
    facts = [r for r in recs["heldout"] if r["family"] == "fact"]
    assert len(facts) >= 12 and {r["lang"] for r in facts} == {"en", "zh"}
    for r in facts:  # the subject and its answer are stated together in some document
        assert any(r["subject"] in d and r["answer"] in d for d in docs), (r["subject"], r["answer"])
    blob = "\n".join(docs)
    for r in recs["heldout_mcq"]:
        answer = r["choices"]["ABCD".index(r["answer"])]
        assert answer in blob, answer


def test_rule4_heldout_pretrain_documents_are_new(any_mix):
    held = [r["text"] for r in any_mix["recs"]["heldout_pretrain"]]
    blob = "\n\x00\n".join(r["text"] for r in any_mix["recs"]["pretrain"])
    assert len(held) >= 10
    assert not [t for t in held if t in blob]


def _call_key(call):
    """What makes a tool task held out, read from a call: the same key whichever language asked."""
    from minimind.tools.mocks import CITIES

    name, a = call["name"], call["arguments"]
    city = {c[1]: c[0] for c in CITIES}
    if name == "calculator":
        return name, tuple(sorted(map(int, re.findall(r"\d+", a["expression"]))))
    if name == "lookup":
        return name, tools.lookup(a["subject"], a["relation"]), a["relation"], a["subject"].lower()
    if name in ("current_time", "weather"):
        where = a.get("timezone") or a["city"]
        return name, city.get(where, where)
    if name == "unit_converter":
        return name, tools.unit_converter(a["value"], a["from_unit"], a["to_unit"])
    return name, tools.exchange_rate(a["base"], a["quote"], a["amount"])


def test_rule5_heldout_tool_tasks_never_in_training(synth):
    """No held-out tool task (its operands, fact, city, conversion or exchange) is called or asked in training."""
    recs = synth["recs"]
    held = recs["tools_heldout"]
    assert set(TOOL_NAMES) == {schema["function"]["name"] for _, schema in tools.BUILTINS}  # every built-in tool
    assert {r["tool"] for r in held} == set(TOOL_NAMES)
    held_keys = {_call_key(r["call"]) for r in held}
    assert {(x["tool"], _call_key(x["call"])) for x in recs["heldout"] if x["family"] == "tool"} \
        <= {(r["tool"], _call_key(r["call"])) for r in held}
    # the corpus-wide splits: held-out facts for lookup, held-out operand pairs for the calculator
    m = synth["manifest"]["heldout"]
    assert {k[1] for k in held_keys if k[0] == "calculator"} == {tuple(p) for p in m["tool_pairs"]}
    facts = {f"{r['call']['arguments']['relation']}:" for r in held if r["tool"] == "lookup"}
    assert facts <= {f.split(":")[0] + ":" for f in m["facts"]}
    train_keys = Counter()
    for name in TRAIN_FILES:
        for r in recs[name]:
            for msg in r.get("conversations") or []:
                for call in json.loads(msg.get("tool_calls") or "[]"):
                    key = _call_key(call)
                    assert key not in held_keys, (name, call)
                    train_keys[key[0]] += 1
    assert set(train_keys) == set(TOOL_NAMES)  # the scan does see every tool's training calls
    blob = synth["train_blob"]
    leaked = [r["conversations"][-1]["content"] for r in held if r["conversations"][-1]["content"] in blob]
    assert not leaked, leaked[:5]
    # RL prompts hold no held-out question either, and their gt is what the tool answers
    for r in recs["agent_rl"]:
        assert r["conversations"][-1]["content"] not in {h["conversations"][-1]["content"] for h in held}


def test_demo_mix_applies_its_knobs_and_restores_them(demo_mix, synth):
    import minimind.data.synth as synth_mod

    assert synth_mod.ADD_SCRATCHPAD_SHARE == 0.0 and synth_mod.TABLE_SIZES is None  # defaults back
    assert ("about", 14) not in synth_mod.SFT_KINDS and synth_mod.CHAT_IDENTITY_SHARE == 0.0
    m = demo_mix["manifest"]
    assert m["mix"] == "demo"
    assert m["families"]["pretrain"].get("chat", 0) > 0 and m["families"]["sft"].get("about", 0) > 0
    # chat-format pretraining documents open with a training phrasing of "who are you?" in the demo mix
    # (rule 2 keeps the held-out phrasings out); the default mix has none
    asks = [f"<|im_start|>user\n{p}<|im_end|>" for p in synth_mod.IDENTITY_EN + synth_mod.IDENTITY_ZH]

    def who(recs):
        return [d["text"] for d in recs["pretrain"] if any(a in d["text"] for a in asks)]
    assert len(who(demo_mix["recs"])) > 0.02 * len(demo_mix["recs"]["pretrain"]), len(who(demo_mix["recs"]))
    assert all("MiniMind" in t for t in who(demo_mix["recs"])) and not who(synth["recs"])
    # in SFT the question comes inside a greeting or a thanks two times in five (none in the default mix)
    framed = {f.format(Q=p, q=p[:1].lower() + p[1:])
              for frames, pool in zip(synth_mod.IDENTITY_FRAMES, (synth_mod.IDENTITY_EN, synth_mod.IDENTITY_ZH))
              for f in frames for p in pool}

    def asked(recs, questions):
        return sum(m["content"] in questions for r in recs["sft"] for m in r["conversations"] if m["role"] == "user")
    plain = set(synth_mod.IDENTITY_EN + synth_mod.IDENTITY_ZH)
    n_framed, n_plain = asked(demo_mix["recs"], framed), asked(demo_mix["recs"], plain)
    assert 0.25 < n_framed / (n_framed + n_plain) < 0.55, (n_framed, n_plain)
    assert asked(synth["recs"], framed) == 0 and asked(synth["recs"], plain) > 0
    # replies to a user's question (a tool's result is answered directly, as before)
    replies = [(u["content"], m["content"]) for r in demo_mix["recs"]["sft"]
               for u, m in zip(r["conversations"], r["conversations"][1:])
               if u["role"] == "user" and m["role"] == "assistant" and not m.get("reasoning_content")]
    worked = [(q, text) for q, text in replies if text.startswith(("Ones:", "个位"))]
    direct = [text for _, text in replies if re.fullmatch(r"\d+ \+ \d+ = \d+[.。]", text)]
    assert len(worked) > 50 and not direct  # every sum reply without <think> works the columns out
    for question, text in worked:
        a, b = map(int, re.findall(r"\d+", question)[-2:])
        ones = re.findall(r"(\d) \+ (\d)(?: \+ 1)? = (\d+)", text)[0]
        # the sum is read off the digits written (the last column writes its whole sum), not worked
        # out again from the operands
        written = "".join(reversed(re.findall(r"(?:write |写)(\d+)", text)))
        c = int(re.search(r"(?:the sum is |和是)(\d+)[.。]$", text).group(1))
        assert (int(ones[0]), int(ones[1])) == (a % 10, b % 10) and a + b == c == int(written), text
    # fewer subjects (TABLE_SIZES), so fewer held-out facts than the default corpus
    assert 30 < len(m["heldout"]["facts"]) < len(synth["manifest"]["heldout"]["facts"])


def test_training_tool_tasks_a_model_cannot_answer_from_memory(monkeypatch):
    """With the shares at 1, every training lookup is about an invented subject and every clock task runs
    at another instant: the answer is the tool's result, and the built-in tables do not hold it."""
    from minimind.data.synth_tools import ToolTasks

    monkeypatch.setattr(ToolTasks, "INVENTED_SHARE", 1.0)
    monkeypatch.setattr(ToolTasks, "CLOCK_SHARE", 1.0)
    tt, rng = ToolTasks(synth_mod.Gen(0)), random.Random(0)
    lookups = [tt.train(rng, "lookup") for _ in range(60)]
    for t in lookups:
        assert t.result.endswith(t.gt) and t.gt in t.answer and t.arguments["subject"] in t.question
        assert tools.execute({"name": "lookup", "arguments": t.arguments}).startswith("error: lookup: unknown subject")
    assert len({t.arguments["subject"] for t in lookups}) > 50
    for kind in ("current_time", "weather"):
        tasks = [tt.train(rng, kind, lang="en") for _ in range(60)]
        assert all(t.gt in t.result and t.gt in t.answer for t in tasks)
        by_city = {}
        for t in tasks:
            by_city.setdefault(next(iter(t.arguments.values())), set()).add(t.result)
        repeated = [results for results in by_city.values() if len(results) > 1]
        assert repeated, kind  # a city asked twice answers differently
    assert "2025-05-20" in tools.execute({"name": "current_time", "arguments": {"timezone": "Paris"}})
    monkeypatch.setattr(ToolTasks, "INVENTED_SHARE", 0.0)
    monkeypatch.setattr(ToolTasks, "CLOCK_SHARE", 0.0)
    plain = [tt.train(rng, "lookup") for _ in range(20)]
    assert all(tools.execute({"name": "lookup", "arguments": t.arguments}) == t.result for t in plain)
    assert all(t.result.endswith(t.gt) and t.gt in t.answer for t in plain)


def test_substituted_lookups_disagree_with_the_corpus_and_never_use_a_held_out_value(monkeypatch):
    """SUBSTITUTED_SHARE = 1: a real training subject whose tool answer is another subject's value for
    the same relation; the reply states that value, the real tool would say the corpus's value."""
    from minimind.data.synth import Fact
    from minimind.data.synth_tools import ToolTasks

    monkeypatch.setattr(ToolTasks, "SUBSTITUTED_SHARE", 1.0)
    g = synth_mod.Gen(0)
    tt, rng = ToolTasks(g), random.Random(0)
    held_values = {(f.rel.name, f.short(lang)) for f in g.held_facts for lang in ("en", "zh")}
    train_values = {(f.rel.name, f.short(lang)) for f in g.train_facts for lang in ("en", "zh")}
    lookups = [tt.train(rng, "lookup") for _ in range(80)]
    for t in lookups:
        real = tools.execute({"name": "lookup", "arguments": t.arguments})
        assert not real.startswith("error") and real != t.result  # a real subject, another answer
        assert t.result.endswith(t.gt) and t.gt in t.answer and not real.endswith(t.gt)
        rel = t.arguments["relation"]
        assert (rel, t.gt) in train_values or (rel, t.gt) not in held_values, t  # never a held-out value
    assert len({t.gt for t in lookups}) > 30
    # the answer sentence carries the swapped value in every slot its template uses
    f = next(f for f in g.train_facts if f.rel.name == "moons" and f.short("en") != "1")
    one = next(s for s in g.subjects if s.table == "planet" and Fact(f.rel, s).short("en") == "1")
    swapped = invented.swap_answer(random.Random(0), f, [one])
    assert swapped.answer_sentence("en").endswith("has 1 moon.") and swapped.subj.name == f.subj.name
    with pytest.raises(ValueError, match="no other value"):
        invented.swap_answer(random.Random(0), f, [f.subj])


def test_tool_mix_keeps_the_held_out_split_of_every_mix(any_mix, tmp_path):
    """A mix sets the fact tables the split is drawn from, so `data tool-mix` on a `--mix demo` corpus
    must draw with that mix too: no call of a held-out tool task, no held-out fact looked up."""
    from minimind.data.tool_mix import tool_mix
    from minimind.tools.lookup import builtin

    encyclopedia = builtin()
    corpus = any_mix["paths"]["manifest"].parent
    held_keys = {_call_key(r["call"]) for r in any_mix["recs"]["tools_heldout"]}
    held_facts = set(any_mix["manifest"]["heldout"]["facts"])  # "relation:subject" (English name)
    tool_mix(corpus, tmp_path / "mix.jsonl", conversations=600, replay=0, lookup_share=0.8,
             invented=0.0, substituted=0.0, seed=3)
    lookups = 0
    for line in (tmp_path / "mix.jsonl").read_text(encoding="utf-8").splitlines():
        for m in json.loads(line)["conversations"]:
            for call in json.loads(m.get("tool_calls") or "[]"):
                assert _call_key(call) not in held_keys, call
                if call["name"] == "lookup":
                    lookups += 1
                    by_table = encyclopedia.subjects(call["arguments"]["subject"])  # English or Chinese name
                    assert {f"{call['arguments']['relation']}:{e['name']}" for e in by_table.values()} \
                        .isdisjoint(held_facts), call
    assert lookups >= 400
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"seed": 0, "mix": "nope"}', encoding="utf-8")
    with pytest.raises(UserError, match="unknown mix 'nope'"):
        tool_mix(other, tmp_path / "x.jsonl")


def test_tool_mix_draws_with_the_corpus_split_and_replays_its_sft(synth, tmp_path):
    """`data tool-mix`: new tool conversations (none with a held-out key) plus replayed sft.jsonl lines;
    with every share at 0 each tool result is what the tool set answers, with the shares at 1 no lookup is."""
    from minimind.data.tool_mix import tool_mix

    corpus = synth["paths"]["manifest"].parent
    held_keys = {_call_key(r["call"]) for r in synth["recs"]["tools_heldout"]}
    sft_lines = set((corpus / "sft.jsonl").read_text(encoding="utf-8").splitlines())

    def calls_and_results(rec):
        msgs = rec["conversations"]
        calls = [c for m in msgs for c in json.loads(m.get("tool_calls") or "[]")]
        return calls, [m["content"] for m in msgs if m["role"] == "tool"]

    counts = tool_mix(corpus, tmp_path / "plain.jsonl", conversations=400, replay=30, lookup_share=0.5,
                      invented=0.0, substituted=0.0, clock=0.0, seed=1)
    lines = (tmp_path / "plain.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 430 and counts["replayed"] == 30 and sum(counts.values()) == 430
    assert sum(line in sft_lines for line in lines) >= 30  # (a new conversation may equal one of the corpus's)
    new = [json.loads(line) for line in lines if line not in sft_lines]
    assert len(new) >= 390
    assert 160 <= counts["lookup"] <= 240 and set(counts) == set(TOOL_NAMES) | {"replayed"}
    n_parallel = 0
    for rec in new:
        _check_messages(rec["conversations"], "tool-mix")
        calls, results = calls_and_results(rec)
        assert calls and len(calls) == len(results)
        n_parallel += len(calls) == 2
        for call, result in zip(calls, results):
            assert _call_key(call) not in held_keys, call
            assert tools.execute(call) == result, (call, result)  # shares at 0: the tool set's own answer
    assert 10 <= n_parallel <= 50  # ~7% make two calls in one turn

    tool_mix(corpus, tmp_path / "hard.jsonl", conversations=200, replay=0, lookup_share=1.0,
             invented=1.0, substituted=1.0, clock=1.0, seed=1)
    hard = [json.loads(line) for line in (tmp_path / "hard.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(hard) == 200
    for rec in hard:
        calls, results = calls_and_results(rec)
        assert {c["name"] for c in calls} == {"lookup"}
        for call, result in zip(calls, results):
            assert tools.execute(call) != result  # invented subjects: only this result answers
    with pytest.raises(UserError, match="manifest.json"):
        tool_mix(tmp_path, tmp_path / "x.jsonl")
    with pytest.raises(UserError, match="--invented"):
        tool_mix(corpus, tmp_path / "x.jsonl", invented=1.5)
    with pytest.raises(UserError, match="has only"):
        tool_mix(corpus, tmp_path / "x.jsonl", replay=10**6)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text('{"seed": 0}', encoding="utf-8")
    (bad / "sft.jsonl").write_text('{"conversations": []}\n{"conversations": [}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"sft.jsonl:2: not a JSON record"):
        tool_mix(bad, tmp_path / "x.jsonl", conversations=1, replay=2)
    assert not (tmp_path / "x.jsonl").exists()  # nothing half-written
