"""lm-eval interop: `lm_eval --model hf` on our export and the native "minimind" model agree with `eval mc`.

Runs offline: the task is a local YAML over a local JSONL (HF_DATASETS_OFFLINE, HF_HUB_OFFLINE).
"""

import glob
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # lm-eval's hf model needs it (pip install "lm-eval[hf]")

from minimind.checkpoint import save_checkpoint  # noqa: E402
from minimind.config import ModelConfig  # noqa: E402
from minimind.eval.lm_eval_task import write_task  # noqa: E402
from minimind.eval.loglik import load_scoring_model  # noqa: E402
from minimind.eval.mc import evaluate_mc  # noqa: E402
from minimind.eval.ppl import evaluate_ppl  # noqa: E402
from minimind.eval.readers import load_benchmark  # noqa: E402
from minimind.model import MiniMindForCausalLM  # noqa: E402
from minimind.runtime import rng_state, set_rng_state  # noqa: E402

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def setup(tok, corpus, tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    ckpt = save_checkpoint(root / "ckpt", MiniMindForCausalLM(cfg), tok)
    data = corpus / "eval" / "heldout_mcq.jsonl"
    task_dir = write_task(data, root / "tasks").parent
    return SimpleNamespace(root=root, ckpt=ckpt, data=data, task_dir=task_dir)


def ours(setup):
    sm = load_scoring_model(setup.ckpt, "cpu", "fp32")
    return evaluate_mc(sm, load_benchmark(setup.data), batch_size=64)


def lm_eval_samples(out_dir) -> dict[int, list[float]]:
    (path,) = glob.glob(str(out_dir / "**" / "samples_minimind_mcq_*.jsonl"), recursive=True)
    out = {}
    for line in open(path, encoding="utf-8"):
        s = json.loads(line)
        out[s["doc_id"] + 1] = [float(r[0][0]) for r in s["resps"]]  # doc i is line i + 1
    return out


def lm_eval_results(out_dir) -> dict:
    (path,) = glob.glob(str(out_dir / "**" / "results_*.json"), recursive=True)
    return json.loads(open(path).read())["results"]["minimind_mcq"]


def check_agreement(res: dict, results: dict, samples: dict) -> None:
    assert abs(100 * results["acc,none"] - 100 * res["overall"]["acc"]) <= 0.5
    assert abs(100 * results["acc_norm,none"] - 100 * res["overall"]["acc_norm"]) <= 0.5
    assert len(samples) == res["overall"]["n"] == 160
    for it in res["items"]:
        line = int(it["where"].rsplit(":", 1)[1])
        assert samples[line] == pytest.approx(it["loglik"], abs=2e-3)


@pytest.mark.slow  # ~30 s: the lm_eval command indexes all of its ~10k task files first
def test_lm_eval_hf_on_export_agrees_with_eval_mc(setup):
    """The command users run: `lm_eval --model hf --model_args pretrained=EXPORT` on `minimind export hf`."""
    from minimind.export.hf import export_hf

    hf_dir = export_hf(setup.ckpt, setup.root / "hf")
    out = setup.root / "out_hf"
    lm_eval = os.path.join(os.path.dirname(sys.executable), "lm_eval")
    r = subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={hf_dir},dtype=float32",
                        "--include_path", str(setup.task_dir), "--tasks", "minimind_mcq", "--device", "cpu",
                        "--batch_size", "64", "--output_path", str(out), "--log_samples"],
                       capture_output=True, text=True, cwd=setup.root,
                       env={**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(setup.root / "datasets_cache")})
    assert r.returncode == 0, r.stderr[-3000:]
    check_agreement(ours(setup), lm_eval_results(out), lm_eval_samples(out))


def test_native_minimind_model_agrees_with_eval_mc(setup, monkeypatch):
    """The "minimind" model class through lm-eval's evaluator, in process (only our task indexed)."""
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    from minimind.eval.lm_eval_model import MiniMindLM

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(setup.root)
    tm = TaskManager(include_path=str(setup.task_dir), include_defaults=False)
    saved = rng_state()  # simple_evaluate seeds the global generators; leave them as other tests expect
    try:
        out = lm_eval.simple_evaluate(model="minimind", model_args=f"checkpoint={setup.ckpt},dtype=fp32",
                                      tasks=["minimind_mcq"], task_manager=tm, batch_size=64, log_samples=True)
    finally:
        set_rng_state(saved)
    assert get_model("minimind") is MiniMindLM and out["config"]["model"] == "minimind"
    samples = {s["doc_id"] + 1: [float(r[0][0]) for r in s["resps"]] for s in out["samples"]["minimind_mcq"]}
    check_agreement(ours(setup), out["results"]["minimind_mcq"], samples)


def test_native_model_rolling_loglikelihood_is_ppl(setup, corpus):
    """loglikelihood_rolling (lm-eval's perplexity tasks) sums to the nll `eval ppl` computes."""
    from minimind.eval.lm_eval_model import MiniMindLM

    lm = MiniMindLM(checkpoint=str(setup.ckpt), dtype="fp32", max_length=64)
    texts = [json.loads(line)["text"] for line in open(corpus / "eval" / "heldout_pretrain.jsonl")][:4]
    got = lm.loglikelihood_rolling([SimpleNamespace(args=(t,)) for t in texts], disable_tqdm=True)
    f = setup.root / "four.jsonl"
    f.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    res = evaluate_ppl(load_scoring_model(setup.ckpt, "cpu", "fp32"), f, seq_len=64)
    assert sum(got) == pytest.approx(-res["loss"] * res["tokens"], rel=1e-6)


def test_native_model_generate_until_stops(setup):
    from minimind.eval.lm_eval_model import MiniMindLM

    lm = MiniMindLM(checkpoint=str(setup.ckpt), dtype="fp32")
    req = SimpleNamespace(args=("The capital of France is", {"until": ["\n"], "max_gen_toks": 12}))
    (text,) = lm.generate_until([req], disable_tqdm=True)
    ids = lm.tok_encode("The capital of France is")
    with torch.no_grad():  # greedy by hand: the first generated token is the argmax
        first = int(lm.sm.model(torch.tensor([ids])).logits[0, -1].argmax())
    assert "\n" not in text and len(lm.tok_encode(text)) <= 12
    assert text.startswith(lm.sm.tok.decode([first]).split("\n")[0])
