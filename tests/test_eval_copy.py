"""In-context copying probe (`minimind eval copy`)."""

import json

import pytest
import torch

from minimind.checkpoint import save_checkpoint
from minimind.errors import UserError
from minimind.eval.copy import copy_probes, evaluate_copy, word_pieces
from minimind.eval.loglik import ScoringModel
from tests.test_eval_loglik import run_cli, tiny_model


class _Lookback(torch.nn.Module):
    """Hidden state = one-hot of a predicted next token, with lm_head the identity.

    offset None: the token that followed the previous occurrence of the current token (an ideal
    induction head); offset d: the token d - 1 positions back (a fixed-distance copy)."""

    def __init__(self, vocab: int, offset: int | None = None, max_pos: int = 256):
        super().__init__()
        self.vocab, self.offset = vocab, offset
        self.register_buffer("rope_cos", torch.zeros(max_pos, 1))  # what ScoringModel reads for its length

    def forward(self, x):
        B, T = x.shape
        h = torch.zeros(B, T, self.vocab)
        for b in range(B):
            seen = {}
            for t in range(T):
                a = int(x[b, t])
                if self.offset is None and a in seen:
                    h[b, t, int(x[b, seen[a] + 1])] = 30.0
                elif self.offset is not None and t - self.offset + 1 >= 0:
                    h[b, t, int(x[b, t - self.offset + 1])] = 30.0
                seen[a] = t
        return h, None


class _Oracle(torch.nn.Module):
    def __init__(self, vocab, offset=None):
        super().__init__()
        self.model, self.lm_head = _Lookback(vocab, offset), torch.nn.Identity()


def scoring(model, tok):
    return ScoringModel(model, tok, torch.device("cpu"), torch.float32)


def test_probes_are_two_copies_of_distinct_words(tok):
    words = set(word_pieces(tok))
    assert len(words) >= 50 and all(tok.decode([i]).startswith(" ") for i in words)
    nl = tok.encode("\n")
    for ids, first, second, L in copy_probes(tok, 50, 3, 9, 5, seed=1):
        assert 3 <= L <= 9 and first - 1 <= 5 and ids[0] == tok.eot_id
        listed = ids[first:first + L]
        assert ids[second:second + L] == listed and ids[first + L:second] == nl and len(ids) == second + L
        body = ids[1:first + L]
        assert len(set(body)) == len(body) and set(body) <= words  # filler and list: distinct words
        assert tok.encode(tok.decode(ids[1:])) == ids[1:]  # the text tokenizes back to the same ids
    a, b = copy_probes(tok, 5, seed=2), copy_probes(tok, 5, seed=2)
    assert a == b and a != copy_probes(tok, 5, seed=3)


def test_an_induction_head_scores_all_and_a_fixed_offset_does_not(tok):
    V = tok.vocab_size
    ideal = evaluate_copy(scoring(_Oracle(V), tok), n=60, seed=0)
    assert ideal["copy_accuracy"] == 1.0 and ideal["baseline_accuracy"] == 0.0
    assert ideal["copy_loss"] < 1e-3 < ideal["baseline_loss"]
    # copies from a fixed distance: right only for the lists whose length puts the copy there
    fixed = evaluate_copy(scoring(_Oracle(V, offset=10), tok), n=60, seed=0)
    assert 0.0 < fixed["copy_accuracy"] < 0.2


def test_an_untrained_model_does_not_copy(tok):
    res = evaluate_copy(scoring(tiny_model(tok.vocab_size), tok), n=40, seed=0)
    assert res["copy_accuracy"] < 0.05 and res["tokens"] == sum(L - 1 for *_, L in copy_probes(tok, 40))


def test_bad_settings(tok):
    sm = scoring(tiny_model(tok.vocab_size, max_pos=32), tok)
    with pytest.raises(UserError, match="exceed the model's 32 positions"):
        evaluate_copy(sm, n=4)
    with pytest.raises(UserError, match="need 2 <= shortest"):
        copy_probes(tok, 4, 1, 3)


def test_cli_prints_the_table_and_writes_json(tok, tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(tok.vocab_size), tok)
    out = tmp_path / "copy.json"
    code, stdout, err = run_cli(capsys, "eval", "copy", ckpt, "--probes", "20", "--lengths", "4-8",
                                "--json", out, "--no-progress")
    assert code == 0, err
    res = json.loads(out.read_text())
    assert res["probes"] == 20 and res["lengths"] == [4, 8] and 0 <= res["copy_accuracy"] <= 1
    assert "second copy (after reading)" in stdout and "does not copy from its context" in stdout
    with pytest.raises(SystemExit) as e:
        run_cli(capsys, "eval", "copy", ckpt, "--lengths", "9-3")
    assert e.value.code == 2 and "MIN <= MAX" in capsys.readouterr().err


def test_a_closed_pipe_ends_the_command_quietly(tok, tmp_path):
    """`minimind eval copy ... | head -1`: the reader is gone before the table is printed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    ckpt = save_checkpoint(tmp_path / "ckpt", tiny_model(tok.vocab_size), tok)
    read, write = os.pipe()
    os.close(read)  # every write to `write` now fails with EPIPE: no timing involved
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-m", "minimind.cli", "eval", "copy", str(ckpt), "--probes", "4",
                        "--lengths", "4-6", "--no-progress"], stdout=write, stderr=subprocess.PIPE, text=True,
                       cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, timeout=300)
    os.close(write)
    assert p.returncode == 141 and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
