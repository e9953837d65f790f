"""An lm-eval task for minimind's multiple-choice file (`minimind eval lm-eval-task`).

EleutherAI's lm-evaluation-harness reads tasks from YAML. This writes one over a local
mcq.jsonl ({"question", "choices", "answer": "B"}) with the prompt `eval mc` uses, so that

    lm_eval --model hf --model_args pretrained=EXPORT --include_path DIR --tasks minimind_mcq

(EXPORT from `minimind export hf`) scores the same requests as `minimind eval mc CKPT --data FILE`
and reports the same acc and acc_norm. The data path is written absolute: the task runs from
any directory and offline (HF_DATASETS_OFFLINE=1: a local JSON file needs no hub).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError
from .mc import CLOZE, TARGET_DELIMITER


def task_yaml(data, name: str = "minimind_mcq") -> str:
    data = Path(data).resolve()
    prompt = CLOZE["mcq"].replace("{q}", "{{question}}")
    lines = [
        f"task: {name}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(data))}",
        "test_split: test",
        "output_type: multiple_choice",
        f"doc_to_text: {json.dumps(prompt, ensure_ascii=False)}",
        "doc_to_choice: choices",
        "doc_to_target: \"{{'ABCDEFGHIJ'.index(answer)}}\"",
        f"target_delimiter: {json.dumps(TARGET_DELIMITER)}",
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
        "  - metric: acc_norm",
        "    aggregation: mean",
        "    higher_is_better: true",
        "metadata:",
        "  version: 1.0",
    ]
    return "\n".join(lines) + "\n"


def write_task(data, out_dir, name: str = "minimind_mcq") -> Path:
    from .readers import read_mcq

    data = Path(data)
    if not data.is_file():
        raise UserError(f"{data}: no such file")
    read_mcq(data)  # refuse a malformed file here, with its file:line, not deep inside lm-eval
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    path.write_text(task_yaml(data, name), encoding="utf-8")
    return path


def run_lm_eval_task(args) -> Path:
    path = write_task(args.data, args.out, args.name)
    print(f"wrote {path}\nrun: lm_eval --model hf --model_args pretrained=EXPORT_DIR --include_path {path.parent} "
          f"--tasks {args.name}")
    return path
