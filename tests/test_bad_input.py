"""User mistakes on the command line end with one line and exit code 2, before any work is done."""

import json

import pytest

from minimind.checkpoint import save_checkpoint
from minimind.errors import UserError
from minimind.reward.rules import RuleReward
from minimind.runtime import pick_device
from tests.test_engine import TINY
from tests.test_eval_loglik import run_cli, tiny_model


def fails(capsys, *argv, says):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and says in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line
    return err


def usage_error(capsys, *argv, says):
    """A flag argparse rejects: one line naming the command, the flag and where to read more."""
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, *argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1 and "--help`)" in err, err


def test_argparse_errors_are_one_line_and_bare_minimind_lists_the_commands(capsys):
    usage_error(capsys, "pretrain", "--data", "x", says="minimind pretrain: error: the following arguments are "
                "required: --out (see `minimind pretrain --help`)")
    usage_error(capsys, "eval", "nosuch", says="minimind eval: error: argument SUBCOMMAND: invalid choice: 'nosuch'")
    code, out, _ = run_cli(capsys)
    assert code == 2 and "usage: minimind" in out and "pretrain" in out and "eval" in out


@pytest.mark.parametrize("flag,value,says", [
    ("--lr", "-1", "--lr -1.0: must be above 0.0"),
    ("--min-lr-ratio", "5", "--min-lr-ratio 5.0: must be at least 0.0 and at most 1.0"),
    ("--steps", "-5", "--steps -5: must be at least 0"),
    ("--warmup", "-3", "--warmup -3: must be at least 0"),
    ("--grad-clip", "-1", "--grad-clip -1.0: must be at least 0.0"),
    ("--weight-decay", "-0.5", "--weight-decay -0.5: must be at least 0.0"),
    ("--epochs", "0", "--epochs 0.0: must be above 0.0"),
])
def test_training_numbers_out_of_range(corpus, tokenizer_dir, tmp_path, capsys, flag, value, says):
    fails(capsys, "pretrain", "--data", corpus / "pretrain.jsonl", "--tokenizer", tokenizer_dir, "--out",
          tmp_path / "run", *TINY, "--steps", "2", flag, value, says=says)
    assert not (tmp_path / "run").exists()


def test_training_paths(corpus, tokenizer_dir, tmp_path, capsys):
    base = ["pretrain", "--data", corpus / "pretrain.jsonl", "--tokenizer", tokenizer_dir, *TINY, "--steps", "2"]
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    fails(capsys, *base, "--out", taken, says=f"--out {taken}: a file of that name exists")
    assert taken.read_text() == "keep me"
    fails(capsys, *base, "--out", tmp_path / "r", "--eval-data", tmp_path / "nope.jsonl",
          says=f"--eval-data {tmp_path / 'nope.jsonl'}: no such file")
    fails(capsys, *base, "--out", tmp_path / "r", "--device", "banana", says="--device banana: not a device")
    fails(capsys, "sft", "--data", corpus / "sft.jsonl", "--init", tmp_path / "r", "--out", tmp_path / "s",
          "--reasoning", "--think-weight", "-2", "--steps", "2", says="--think-weight -2.0: must be at least 0.0")


def test_library_errors_are_user_errors():
    with pytest.raises(UserError, match="--device banana: not a device"):
        pick_device("banana")
    with pytest.raises(UserError, match=r"unknown reward rules \['bogus'\]"):
        RuleReward({"bogus": 1.0})


def test_output_paths(corpus, tmp_path, capsys):
    (tmp_path / "adir").mkdir()
    fails(capsys, "data", "tool-mix", "--corpus", corpus, "--out", tmp_path / "adir", "--conversations", "5",
          "--replay", "5", says="a directory; give a file name")
    assert not (tmp_path / "adir.tmp").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 5.0 - s}) + "\n" for s in range(1, 4)))
    code, _, err = run_cli(capsys, "plot", run, "--out", tmp_path / "new" / "sub" / "c.png")
    assert code == 0, err
    assert (tmp_path / "new" / "sub" / "c.png").read_bytes()[:4] == b"\x89PNG"  # its folder was made
    fails(capsys, "plot", run, "--out", tmp_path / "adir", says="a directory; give a file name")


def test_eval_tasks_inputs(tok, corpus, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(tok.vocab_size), tok)
    binary = tmp_path / "bin.jsonl"
    first = (corpus / "eval" / "heldout.jsonl").read_bytes().splitlines()[0]
    binary.write_bytes(first + b"\n\xff\xfe\x00garbage\n")
    fails(capsys, "eval", "tasks", ckpt, "--data", binary, says=f"{binary}:2: not UTF-8 text")
    fails(capsys, "eval", "tasks", tmp_path / "missing", says="checkpoint directory not found")
    heldout = corpus / "eval" / "heldout.jsonl"
    usage_error(capsys, "eval", "tasks", ckpt, "--data", heldout, "--batch-size", "0", says="positive integer")
    usage_error(capsys, "eval", "tasks", ckpt, "--data", heldout, "--limit", "-1", says="positive integer")
    (tmp_path / "adir").mkdir()
    usage_error(capsys, "eval", "tasks", ckpt, "--data", heldout, "--json", tmp_path / "adir",
                says="is a directory; give a file name")
    usage_error(capsys, "info", "--preset", "nano", "--seq-len", "0", says="positive integer")


def test_tokenizer_without_text(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails(capsys, "tokenizer", "train", "--data", empty, "--out", tmp_path / "tok", "--no-progress",
          says="no text to learn from")
    assert not (tmp_path / "tok").exists()
    usage_error(capsys, "tokenizer", "train", "--data", empty, "--out", tmp_path / "tok", "--max-docs", "0",
                says="positive integer")
