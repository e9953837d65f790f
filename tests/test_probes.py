"""--probe-prompts: greedy replies at every evaluation, logged to metrics.jsonl (and printed)."""

import json

from minimind.checkpoint import load_checkpoint
from minimind.cli import main
from minimind.infer.engine import Engine, SamplingParams
from tests.test_engine import pretrain


def test_probes_are_logged_at_every_evaluation_and_match_the_model(corpus, tokenizer_dir, tmp_path, capsys):
    probes = tmp_path / "probes.txt"
    probes.write_text("# comments and blank lines are skipped\nThe capital of France is\n\n1 + 1 =\n")
    run = tmp_path / "run"
    pretrain(corpus, tokenizer_dir, run, "--steps", "4", "--eval-every", "2", "--log-every", "3",
             "--probe-prompts", str(probes))
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    probed = {r["step"]: r for r in rows if "probe/0" in r}
    assert sorted(probed) == [2, 4]  # the evaluation at step 2 (logged though log-every is 3) and the final one
    assert {"probe/0", "probe/1"} <= set(probed[4]) and "probe/2" not in probed[4]
    model, tok = load_checkpoint(run)  # the final probes are the final model's greedy continuations
    want = Engine(model, tok).generate([tok.encode("The capital of France is"), tok.encode("1 + 1 =")],
                                       SamplingParams(temperature=0.0, max_new_tokens=32))
    assert [probed[4]["probe/0"], probed[4]["probe/1"]] == [r.text for r in want]


def test_a_bad_probe_file_is_one_line(corpus, tokenizer_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    for path, message in ((tmp_path / "missing.txt", "file not found"), (empty, "no prompts")):
        assert main(["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
                     "--out", str(tmp_path / "x"), "--steps", "1", "--probe-prompts", str(path), "--no-progress"]) == 2
        assert message in capsys.readouterr().err
