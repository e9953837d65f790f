"""Readers for multiple-choice benchmarks in the layouts users download them in.

C-Eval (Huang et al. 2023), CMMLU (Li et al. 2023), ARC (Clark et al. 2018), OpenBookQA (Mihaylov et
al. 2018), PIQA (Bisk et al. 2020), HellaSwag (Zellers et al. 2019), and minimind's own mcq.jsonl.

Every reader turns a file into `Item`s (question, options, index of the right one, subject,
file:line); mc.py turns items into prompts. A malformed file stops with `file:line: what is
wrong` (UserError, exit code 2). Layouts:

    C-Eval     DIR/{dev,val,test}/SUBJECT_{dev,val,test}.csv     id,question,A,B,C,D,answer[,explanation]
               (test has no answers; the default split is val)
    CMMLU      DIR/{dev,test}/SUBJECT.csv                          ,Question,A,B,C,D,Answer
    ARC        ARC-Easy-Test.jsonl ...                             {"question": {"stem", "choices":
                                                                    [{"text", "label"}]}, "answerKey"}
    OpenBookQA Main/test.jsonl                                     the same as ARC; or Hugging Face's
                                                                    {"question_stem", "choices", "answerKey"}
    PIQA       valid.jsonl + valid-labels.lst                      {"goal", "sol1", "sol2"}; labels one per
                                                                    line in FILE-labels.lst, or a "label" field
    HellaSwag  hellaswag_val.jsonl                                 {"ctx" (or "ctx_a", "ctx_b"), "endings",
                                                                    "label", "activity_label"}
    minimind   mcq.jsonl, eval/heldout_mcq.jsonl                   {"question", "choices", "answer": "B",
                                                                    "family"}

ARC and OpenBookQA also come from Hugging Face with choices as {"text": [...], "label": [...]};
both forms are read. A C-Eval or CMMLU directory holds one CSV per subject; a single CSV file
is one subject, and its dev file is looked up where the published layout puts it.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError

FORMATS = ("ceval", "cmmlu", "arc", "openbookqa", "piqa", "hellaswag", "mcq")
LETTERS = "ABCDEFGHIJ"


@dataclass
class Item:
    question: str  # the question text (HellaSwag: the context the endings continue)
    options: list[str]
    gold: int  # index into options
    subject: str
    where: str  # file:line


@dataclass
class Benchmark:
    format: str
    items: dict[str, list[Item]]  # subject -> questions to evaluate
    dev: dict[str, list[Item]] = field(default_factory=dict)  # subject -> few-shot pool

    def __len__(self) -> int:
        return sum(len(v) for v in self.items.values())


# ----------------------------------------------------------------------------- detection

def detect_format(path: Path) -> str:
    """The benchmark format of a file or directory, from its header or first record."""
    if path.is_dir():
        csvs = sorted(path.rglob("*.csv"))
        if csvs:
            return detect_format(csvs[0])
        jsonls = sorted(path.glob("*.jsonl"))
        if not jsonls:
            raise UserError(f"{path}: no .csv or .jsonl benchmark files in this directory")
        return detect_format(jsonls[0])
    if path.suffix.lower() == ".csv":
        header = _csv_header(path)
        if {"id", "question", "answer"} <= set(header):
            return "ceval"
        if {"Question", "Answer"} <= set(header):
            return "cmmlu"
        raise UserError(f"{path}:1: header {header} is neither C-Eval's (id,question,A,B,C,D,answer) nor "
                        f"CMMLU's (,Question,A,B,C,D,Answer); pass --format")
    rec, lineno = _first_record(path)
    keys = set(rec) if isinstance(rec, dict) else set()
    if "goal" in keys and "sol1" in keys:
        return "piqa"
    if "endings" in keys:
        return "hellaswag"
    if "question_stem" in keys or re.search(r"openbook|obqa", path.name, re.IGNORECASE):
        return "openbookqa"
    if "answerKey" in keys:
        return "arc"
    if {"question", "choices", "answer"} <= keys:
        return "mcq"
    raise UserError(f"{path}:{lineno}: cannot tell the benchmark format from keys {sorted(keys)}; "
                    f"pass --format ({', '.join(FORMATS)})")


def _csv_header(path: Path) -> list[str]:
    with _open(path) as f:
        return next(csv.reader(f), [])


def _first_record(path: Path):
    for lineno, rec in _jsonl(path):
        return rec, lineno
    raise UserError(f"{path}: file is empty")


# ----------------------------------------------------------------------------- files

def _open(path: Path):
    try:
        return open(path, encoding="utf-8-sig", newline="")  # utf-8-sig: CSVs saved by Excel start with a BOM
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, expected a file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _jsonl(path: Path):
    """(line number, parsed record) for every non-empty line."""
    with _open(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield lineno, json.loads(line)
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None


def _csv_rows(path: Path, columns: list[str]):
    """(line number, {column: value}) for every row; the header must hold `columns`."""
    with _open(path) as f:
        try:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise UserError(f"{path}: file is empty")
            missing = [c for c in columns if c not in header]
            if missing:
                raise UserError(f"{path}:1: header lacks column(s) {missing}; expected {','.join(columns)}")
            at = {c: header.index(c) for c in columns}
            line = reader.line_num
            for row in reader:
                start, line = line + 1, reader.line_num  # a quoted cell may span lines
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise UserError(f"{path}:{start}: {len(row)} cells, the header has {len(header)}; "
                                    f"check the quoting of this row")
                yield start, {c: row[i] for c, i in at.items()}
        except csv.Error as e:
            raise UserError(f"{path}:{reader.line_num}: broken CSV ({e})") from None
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e.reason}); convert the file to UTF-8") from None


def _letter(value, n: int, where: str, what: str = "answer") -> int:
    v = str(value).strip().upper()
    if len(v) != 1 or v not in LETTERS[:n]:
        raise UserError(f"{where}: {what} {value!r} is not one of {', '.join(LETTERS[:n])}")
    return LETTERS.index(v)


def _need(rec, keys: tuple, where: str) -> None:
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise UserError(f"{where}: missing field(s) {missing}")


def _text(value, where: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: {what} must be a non-empty string, got {value!r}")
    return value


# ----------------------------------------------------------------------------- CSV benchmarks

def read_ceval_csv(path: Path, subject: str) -> list[Item]:
    """C-Eval: id,question,A,B,C,D,answer (dev files add explanation; test answers are empty)."""
    items = []
    for line, r in _csv_rows(path, ["question", "A", "B", "C", "D", "answer"]):
        where = f"{path}:{line}"
        if not r["answer"].strip():
            raise UserError(f"{where}: no answer (C-Eval's test split is unlabelled); evaluate --split val")
        items.append(Item(r["question"], [r[k] for k in "ABCD"], _letter(r["answer"], 4, where), subject, where))
    return items


def read_cmmlu_csv(path: Path, subject: str) -> list[Item]:
    """CMMLU: ,Question,A,B,C,D,Answer (the first column is a row number)."""
    items = []
    for line, r in _csv_rows(path, ["Question", "A", "B", "C", "D", "Answer"]):
        where = f"{path}:{line}"
        items.append(Item(r["Question"], [r[k] for k in "ABCD"], _letter(r["Answer"], 4, where), subject, where))
    return items


CSV_LAYOUT = {  # format: (reader, default split, file name of SUBJECT in SPLIT)
    "ceval": (read_ceval_csv, "val", "{subject}_{split}.csv"),
    "cmmlu": (read_cmmlu_csv, "test", "{subject}.csv"),
}


def _subject_of(path: Path, fmt: str) -> str:
    return re.sub(r"_(dev|val|test)$", "", path.stem) if fmt == "ceval" else path.stem


def _read_csv_benchmark(path: Path, fmt: str, split: str | None, dev: Path | None) -> Benchmark:
    reader, default_split, pattern = CSV_LAYOUT[fmt]
    split = split or default_split
    if path.is_dir():
        folder = path / split if (path / split).is_dir() else path
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise UserError(f"{folder}: no .csv files; expected {path}/{split}/{pattern.format(subject='SUBJECT', split=split)}")
        dev_dir = dev or (path / "dev" if (path / "dev").is_dir() else path.parent / "dev")
    else:
        files = [path]
        dev_dir = dev or (path.parent.parent / "dev")  # DIR/val/x_val.csv -> DIR/dev/x_dev.csv
    bench = Benchmark(fmt, {})
    for f in files:
        subject = _subject_of(f, fmt)
        bench.items[subject] = reader(f, subject)
        dev_file = dev_dir if dev_dir.is_file() else dev_dir / pattern.format(subject=subject, split="dev")
        if dev_file.is_file():
            bench.dev[subject] = reader(dev_file, subject)
    return bench


# ----------------------------------------------------------------------------- JSONL benchmarks

def _arc_choices(choices, where: str) -> tuple[list[str], list[str]]:
    """ARC/OpenBookQA choices: [{"text", "label"}] as published, or {"text": [], "label": []} (HF)."""
    if isinstance(choices, dict) and isinstance(choices.get("text"), list) and isinstance(choices.get("label"), list):
        texts, labels = choices["text"], choices["label"]
    elif isinstance(choices, list) and all(isinstance(c, dict) and {"text", "label"} <= c.keys() for c in choices):
        texts, labels = [c["text"] for c in choices], [c["label"] for c in choices]
    else:
        raise UserError(f"{where}: choices must be [{{\"text\", \"label\"}}, ...] or {{\"text\": [...], \"label\": [...]}}")
    if len(texts) != len(labels) or len(texts) < 2:
        raise UserError(f"{where}: need at least two choices with one label each")
    return [_text(t, where, "choice text") for t in texts], [str(lbl).strip() for lbl in labels]


def _gold_label(labels: list[str], key, where: str) -> int:
    key = str(key).strip()
    if key not in labels:
        raise UserError(f"{where}: answerKey {key!r} is not one of the choice labels {labels}")
    return labels.index(key)


def read_arc(path: Path, subject: str) -> list[Item]:
    """ARC and OpenBookQA: {"question": {"stem", "choices"}, "answerKey"} as published; Hugging Face
    puts the stem in "question" (ARC) or "question_stem" (OpenBookQA) and the choices beside it."""
    items = []
    for line, r in _jsonl(path):
        where = f"{path}:{line}"
        _need(r, ("answerKey",), where)
        if "question_stem" in r:
            stem, choices = r["question_stem"], r.get("choices")
        elif isinstance(r.get("question"), dict):
            _need(r["question"], ("stem", "choices"), where + ": question")
            stem, choices = r["question"]["stem"], r["question"]["choices"]
        else:
            _need(r, ("question", "choices"), where)
            stem, choices = r["question"], r["choices"]
        texts, labels = _arc_choices(choices, where)
        items.append(Item(_text(stem, where, "question"), texts, _gold_label(labels, r["answerKey"], where),
                          subject, where))
    return items


def _piqa_labels(path: Path, labels: Path | None) -> list[str] | None:
    """PIQA ships labels apart: valid.jsonl + valid-labels.lst, one 0/1 per line."""
    file = labels or path.with_name(path.stem + "-labels.lst")
    if not file.is_file():
        if labels:
            raise UserError(f"{labels}: no such labels file")
        return None
    with _open(file) as f:
        return [ln.strip() for ln in f if ln.strip()]


def read_piqa(path: Path, subject: str, labels: Path | None = None) -> list[Item]:
    """PIQA: goal, sol1, sol2; the label from FILE-labels.lst (published) or a "label" field (HF)."""
    lst = _piqa_labels(path, labels)
    items = []
    for n, (line, r) in enumerate(_jsonl(path)):
        where = f"{path}:{line}"
        _need(r, ("goal", "sol1", "sol2"), where)
        if lst is not None:
            if n >= len(lst):
                raise UserError(f"{where}: no label (the labels file has {len(lst)} lines); "
                                f"does it belong to this file?")
            label = lst[n]
        elif "label" in r:
            label = r["label"]
        else:
            raise UserError(f"{where}: no label: put {path.stem}-labels.lst next to it, pass --labels, "
                            f"or give records a 'label' field (PIQA's test split is unlabelled)")
        if str(label).strip() not in ("0", "1"):
            raise UserError(f"{where}: label {label!r} must be 0 or 1")
        items.append(Item(_text(r["goal"], where, "goal"), [_text(r["sol1"], where, "sol1"), _text(r["sol2"], where, "sol2")],
                          int(str(label).strip()), subject, where))
    if lst is not None and len(lst) != len(items):
        raise UserError(f"{path}: {len(items)} records but {len(lst)} labels; the labels file belongs to another split")
    return items


def _hellaswag_clean(text: str) -> str:
    """lm-eval's HellaSwag preprocessing: WikiHow's [title]/[step] artifacts out, double spaces out."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def read_hellaswag(path: Path, subject: str) -> list[Item]:
    """HellaSwag: activity_label: ctx_a + " " + ctx_b.capitalize() (or ctx), four endings, label."""
    items = []
    for line, r in _jsonl(path):
        where = f"{path}:{line}"
        _need(r, ("endings",), where)
        if "ctx_a" in r and "ctx_b" in r:
            ctx = f"{r['ctx_a']} {str(r['ctx_b']).capitalize()}"
        elif "ctx" in r:
            ctx = _text(r["ctx"], where, "ctx")
        else:
            raise UserError(f"{where}: missing field 'ctx' (or 'ctx_a' and 'ctx_b')")
        if r.get("activity_label"):
            ctx = f"{r['activity_label']}: {ctx}"
        endings = r["endings"]
        if not isinstance(endings, list) or len(endings) < 2 or not all(isinstance(e, str) for e in endings):
            raise UserError(f"{where}: endings must be a list of at least two strings")
        label = r.get("label")
        if label is None or str(label).strip() == "":
            raise UserError(f"{where}: no label (HellaSwag's test split is unlabelled); use the val file")
        if not str(label).strip().isdigit() or int(label) >= len(endings):
            raise UserError(f"{where}: label {label!r} must be an index into the {len(endings)} endings")
        items.append(Item(_hellaswag_clean(ctx), [_hellaswag_clean(e) for e in endings], int(label), subject, where))
    return items


def read_mcq(path: Path, subject: str | None = None) -> list[Item]:
    """minimind's mcq.jsonl: question, choices (list), answer (a letter), family (the subject)."""
    items = []
    for line, r in _jsonl(path):
        where = f"{path}:{line}"
        _need(r, ("question", "choices", "answer"), where)
        ch = r["choices"]
        if not isinstance(ch, list) or len(ch) < 2 or len(ch) > len(LETTERS):
            raise UserError(f"{where}: choices must be a list of 2..{len(LETTERS)} strings")
        items.append(Item(_text(r["question"], where, "question"), [_text(c, where, "choice") for c in ch],
                          _letter(r["answer"], len(ch), where), str(r.get("family") or subject or path.stem), where))
    return items


def _read_jsonl_benchmark(path: Path, fmt: str, dev: Path | None, labels: Path | None) -> Benchmark:
    def read(p: Path, lbl=None) -> list[Item]:
        subject = p.stem
        if fmt in ("arc", "openbookqa"):  # one layout, two prompts (mc.py)
            return read_arc(p, subject)
        if fmt == "piqa":
            return read_piqa(p, subject, lbl)
        if fmt == "hellaswag":
            return read_hellaswag(p, subject)
        return read_mcq(p)

    if path.is_dir():
        raise UserError(f"{path}: {fmt} files are read one at a time; pass the .jsonl file itself")
    bench = Benchmark(fmt, _by_subject(read(path, labels)))
    if dev is not None:
        pool = read(dev)
        by_subject = _by_subject(pool)
        # few-shot examples come from the same subject where the dev file has it, else from all of it
        bench.dev = {s: by_subject.get(s, pool) for s in bench.items}
    return bench


def _by_subject(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for it in items:
        out.setdefault(it.subject, []).append(it)
    return dict(sorted(out.items()))


def load_benchmark(path, fmt: str = "auto", split: str | None = None, dev=None, labels=None) -> Benchmark:
    """Read a benchmark file or directory (format detected unless given)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    dev, labels = (Path(dev) if dev else None), (Path(labels) if labels else None)
    if dev is not None and not dev.exists():
        raise UserError(f"--dev {dev}: no such file or directory")
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose auto or one of {', '.join(FORMATS)}")
    if fmt in CSV_LAYOUT:
        bench = _read_csv_benchmark(path, fmt, split, dev)
    else:
        bench = _read_jsonl_benchmark(path, fmt, dev, labels)
    if not len(bench):
        raise UserError(f"{path}: no questions found")
    return bench
