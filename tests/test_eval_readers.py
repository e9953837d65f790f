"""Benchmark readers: small samples in each published layout, and malformed files -> file:line errors."""

import json

import pytest

from minimind.errors import UserError
from minimind.eval.readers import detect_format, load_benchmark


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path, records):
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# C-Eval as ceval-exam.zip unpacks: dev/ (with explanations), val/, test/ (no answers)
CEVAL_VAL = '''id,question,A,B,C,D,answer
0,下列哪个是中国的首都？,上海,北京,广州,深圳,B
1,"一个多行的
问题，含逗号",1,2,3,4,D
'''
CEVAL_DEV = '''id,question,A,B,C,D,answer,explanation
0,1+1=？,1,2,3,4,B,1. 因为一加一等于二
'''
CEVAL_TEST = '''id,question,A,B,C,D,answer
0,测试题,a,b,c,d,
'''
# CMMLU as cmmlu_v1_0_1.zip unpacks: dev/SUBJECT.csv, test/SUBJECT.csv; an unnamed row-number column
CMMLU_TEST = ''',Question,A,B,C,D,Answer
0,水的化学式是？,H2O,CO2,O2,NaCl,A
1,太阳从哪边升起？,西,东,南,北,B
'''


def make_ceval(root):
    write(root / "val" / "computer_network_val.csv", CEVAL_VAL)
    write(root / "val" / "high_school_physics_val.csv", CEVAL_VAL)
    write(root / "dev" / "computer_network_dev.csv", CEVAL_DEV)
    write(root / "test" / "computer_network_test.csv", CEVAL_TEST)
    return root


def test_ceval_directory(tmp_path):
    b = load_benchmark(make_ceval(tmp_path / "ceval"))
    assert b.format == "ceval" and list(b.items) == ["computer_network", "high_school_physics"]
    q = b.items["computer_network"]
    assert [it.gold for it in q] == [1, 3] and q[0].options == ["上海", "北京", "广州", "深圳"]
    assert q[1].question == "一个多行的\n问题，含逗号" and q[1].where.endswith("computer_network_val.csv:3")
    assert [it.question for it in b.dev["computer_network"]] == ["1+1=？"]
    assert "high_school_physics" not in b.dev
    one = load_benchmark(tmp_path / "ceval" / "val" / "computer_network_val.csv")  # one file finds its dev
    assert list(one.items) == ["computer_network"] and len(one.dev["computer_network"]) == 1
    with pytest.raises(UserError, match=r"computer_network_test.csv:2: no answer .*--split val"):
        load_benchmark(tmp_path / "ceval", split="test")


def test_cmmlu_directory(tmp_path):
    root = tmp_path / "cmmlu"
    write(root / "test" / "chemistry.csv", CMMLU_TEST)
    write(root / "dev" / "chemistry.csv", CMMLU_TEST)
    b = load_benchmark(root)
    assert b.format == "cmmlu" and [it.gold for it in b.items["chemistry"]] == [0, 1]
    assert b.items["chemistry"][1].options == ["西", "东", "南", "北"] and len(b.dev["chemistry"]) == 2


@pytest.mark.parametrize("text,error", [
    (CMMLU_TEST.replace("H2O,CO2,O2,NaCl,A", "H2O,CO2,O2,NaCl,E"), r"x.csv:2: answer 'E' is not one of A, B, C, D"),
    (CMMLU_TEST.replace(",Question,", ",Q,"), r"x.csv:1: header lacks column\(s\) \['Question'\]"),
    (CMMLU_TEST.replace("西,东,南,北,B", "西,东,南,B"), r"x.csv:3: 6 cells, the header has 7"),
])
def test_malformed_csv(tmp_path, text, error):
    with pytest.raises(UserError, match=error):
        load_benchmark(write(tmp_path / "x.csv", text), "cmmlu")


ARC = {"id": "Mercury_7175875", "question": {"stem": "Which is a source of light?", "choices": [
    {"text": "a mirror", "label": "A"}, {"text": "the Sun", "label": "B"}, {"text": "the Moon", "label": "C"},
    {"text": "a window", "label": "D"}]}, "answerKey": "B"}
ARC_NUMERIC = {"id": "NYSEDREGENTS_2015_4_8", "question": {"stem": "What melts ice?", "choices": [
    {"text": "heat", "label": "1"}, {"text": "cold", "label": "2"}, {"text": "dark", "label": "3"}]},
    "answerKey": "1"}
ARC_HF = {"id": "x", "question": "Which gas do plants take in?",
          "choices": {"text": ["oxygen", "carbon dioxide"], "label": ["A", "B"]}, "answerKey": "B"}


def test_arc_published_and_hf(tmp_path):
    b = load_benchmark(jsonl(tmp_path / "ARC-Easy-Test.jsonl", [ARC, ARC_NUMERIC, ARC_HF]))
    assert b.format == "arc" and list(b.items) == ["ARC-Easy-Test"]
    items = b.items["ARC-Easy-Test"]
    assert [(it.gold, len(it.options)) for it in items] == [(1, 4), (0, 3), (1, 2)]
    assert items[0].question == "Which is a source of light?" and items[2].options[1] == "carbon dioxide"


def test_openbookqa_published_and_hf(tmp_path):
    pub = dict(ARC, id="7-980", answerKey=" C")  # OpenBookQA Main/test.jsonl has the ARC shape
    hf = {"id": "8-343", "question_stem": "A person wants to start saving money",
          "choices": {"text": ["quit", "sell", "save", "spend"], "label": ["A", "B", "C", "D"]}, "answerKey": "C"}
    b = load_benchmark(jsonl(tmp_path / "openbookqa_test.jsonl", [pub, hf]))
    assert b.format == "openbookqa"
    assert [it.gold for it in b.items["openbookqa_test"]] == [2, 2]
    assert detect_format(jsonl(tmp_path / "hf.jsonl", [hf])) == "openbookqa"


def test_piqa_with_labels_file_and_field(tmp_path):
    recs = [{"goal": "To open a jar", "sol1": "twist the lid", "sol2": "shake it"},
            {"goal": "To cool tea", "sol1": "heat it", "sol2": "wait"}]
    f = jsonl(tmp_path / "valid.jsonl", recs)
    write(tmp_path / "valid-labels.lst", "0\n1\n")
    b = load_benchmark(f)
    assert b.format == "piqa" and [it.gold for it in b.items["valid"]] == [0, 1]
    assert b.items["valid"][1].options == ["heat it", "wait"]
    g = jsonl(tmp_path / "hf" / "piqa.jsonl", [dict(r, label=1 - i) for i, r in enumerate(recs)])
    assert [it.gold for it in load_benchmark(g).items["piqa"]] == [1, 0]
    write(tmp_path / "valid-labels.lst", "0\n")
    with pytest.raises(UserError, match=r"valid.jsonl:2: no label \(the labels file has 1 lines\)"):
        load_benchmark(f)
    t = jsonl(tmp_path / "tests.jsonl", recs)
    with pytest.raises(UserError, match=r"tests.jsonl:1: no label: put tests-labels.lst next to it"):
        load_benchmark(t)


def test_hellaswag_like_lm_eval(tmp_path):
    rec = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.",
           "ctx_b": "he", "ctx": "A man is sitting on a roof. he",
           "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                       "is holding a rubik's cube.", "starts pulling up roofing on a roof. [step] Then"],
           "source_id": "activitynet~v_-JhWjGDPHMY", "split": "val", "split_type": "indomain", "label": 3}
    b = load_benchmark(jsonl(tmp_path / "hellaswag_val.jsonl", [rec, {k: v for k, v in rec.items() if k != "ctx_a"}]))
    first, second = b.items["hellaswag_val"]
    assert first.question == "Roof shingle removal: A man is sitting on a roof. He"  # ctx_b capitalised
    assert second.question == "Roof shingle removal: A man is sitting on a roof. he"  # falls back to ctx
    assert first.options[3] == "starts pulling up roofing on a roof. Then" and first.gold == 3
    with pytest.raises(UserError, match=r"t.jsonl:1: no label \(HellaSwag's test split is unlabelled\)"):
        load_benchmark(jsonl(tmp_path / "t.jsonl", [dict(rec, label="")]))


def test_builtin_mcq(corpus):
    b = load_benchmark(corpus / "eval" / "heldout_mcq.jsonl")
    assert b.format == "mcq" and "capital" in b.items
    lines = (corpus / "eval" / "heldout_mcq.jsonl").read_text(encoding="utf-8").splitlines()
    first = json.loads(lines[0])
    item = next(it for items in b.items.values() for it in items if it.where.endswith(":1"))
    assert item.question == first["question"] and item.options[item.gold] == first["choices"]["ABCD".index(first["answer"])]
    assert len(b) == len(lines)


def test_jsonl_dev_pool_by_subject(tmp_path):
    recs = [{"question": f"q{i}", "choices": ["a", "b"], "answer": "A", "family": fam}
            for i, fam in enumerate(["x", "x", "y"])]
    dev = jsonl(tmp_path / "dev.jsonl", recs[:2])
    b = load_benchmark(jsonl(tmp_path / "test.jsonl", recs), dev=dev)
    assert [it.question for it in b.dev["x"]] == ["q0", "q1"]
    assert [it.question for it in b.dev["y"]] == ["q0", "q1"]  # no "y" in dev: the whole pool


@pytest.mark.parametrize("line,error", [
    ('{"question": "q", "choices": ["a", "b"], "answer": "C"}', r"m.jsonl:2: answer 'C' is not one of A, B"),
    ('{"question": "q", "choices": "ab", "answer": "A"}', r"m.jsonl:2: choices must be a list"),
    ('{"question": "q", "answer": "A"}', r"m.jsonl:2: missing field\(s\) \['choices'\]"),
    ('{"question": "q", "choices": ["a", "b"], "answer": "A"', r"m.jsonl:2: not valid JSON"),
    ('["not", "an", "object"]', r"m.jsonl:2: expected a JSON object"),
])
def test_malformed_mcq(tmp_path, line, error):
    ok = '{"question": "q", "choices": ["a", "b"], "answer": "A"}'
    with pytest.raises(UserError, match=error):
        load_benchmark(write(tmp_path / "m.jsonl", ok + "\n" + line + "\n"), "mcq")


@pytest.mark.parametrize("rec,error", [
    (dict(ARC, answerKey="E"), r"a.jsonl:1: answerKey 'E' is not one of the choice labels"),
    ({"question": {"stem": "s"}, "answerKey": "A"}, r"a.jsonl:1: question: missing field\(s\) \['choices'\]"),
    ({"question": {"stem": "s", "choices": [{"text": "t"}]}, "answerKey": "A"}, r"a.jsonl:1: choices must be"),
])
def test_malformed_arc(tmp_path, rec, error):
    with pytest.raises(UserError, match=error):
        load_benchmark(jsonl(tmp_path / "a.jsonl", [rec]), "arc")


def test_undetectable_and_missing(tmp_path):
    with pytest.raises(UserError, match=r"u.jsonl:1: cannot tell the benchmark format .* pass --format"):
        load_benchmark(jsonl(tmp_path / "u.jsonl", [{"text": "x"}]))
    with pytest.raises(UserError, match="no such file or directory"):
        load_benchmark(tmp_path / "none.jsonl")
    with pytest.raises(UserError, match=r"x.csv:1: header .* pass --format"):
        load_benchmark(write(tmp_path / "x.csv", "a,b\n1,2\n"))
