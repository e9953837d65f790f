"""--batch-size auto: the largest divisor of the step's rows that fits, rows per step kept."""

import json

import pytest
import torch

import minimind.train.autobatch as ab
from minimind.cli import main
from minimind.errors import UserError
from minimind.train.pretrain import LanguageModeling
from tests.conftest import tiny_model
from tests.test_engine import OPT, SHAPE


def test_largest_divisor_that_fits():
    assert ab.pick_micro_batch(32, lambda b: b <= 10) == 8
    assert ab.pick_micro_batch(12, lambda b: b <= 5) == 4
    assert ab.pick_micro_batch(7, lambda b: b <= 6) == 1
    tried = []
    ab.pick_micro_batch(24, lambda b: tried.append(b) or b <= 6)
    assert tried == [24, 12, 8, 6]  # from the largest down, stopping at the first fit
    with pytest.raises(UserError, match="not even one row"):
        ab.pick_micro_batch(4, lambda b: False)


def test_cpu_estimate_grows_with_rows_and_decides_the_split(tok, monkeypatch):
    model = tiny_model(tok)
    est = [ab.cpu_estimate_bytes(model.config, b, 64, torch.float32, 10**6, 0) for b in (1, 2, 4)]
    assert est[0] < est[1] < est[2] and est[2] - est[1] == 2 * (est[1] - est[0])  # linear in rows
    cpu = torch.device("cpu")
    assert ab.fit_batch_size(model, LanguageModeling(), 32, 64, "pretrain", cpu, torch.float32) == (32, 1)
    trained = sum(p.numel() * 4 for p in model.parameters())
    need8 = ab.cpu_estimate_bytes(model.config, 8, 64, torch.float32, trained, 0)
    monkeypatch.setattr(ab, "available_ram", lambda: int(need8 / ab.CPU_FRACTION) + 1)  # room for 8 rows
    assert ab.fit_batch_size(model, LanguageModeling(), 32, 64, "pretrain", cpu, torch.float32) == (8, 4)
    assert ab.fit_batch_size(model, LanguageModeling(), 32, 64, "dpo", cpu, torch.float32) == (4, 8)  # 2 rows a pair


def test_cli_batch_size_auto_keeps_the_rows_per_step(corpus, tokenizer_dir, tmp_path, capsys):
    from minimind.checkpoint import resolve_checkpoint

    opt = [x for x in OPT if x not in ("--batch-size", "4")]
    argv = ["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
            "--out", str(tmp_path / "run"), *SHAPE, *opt, "--steps", "1", "--batch-size", "auto",
            "--grad-accum", "2"]
    assert main(argv) == 0
    train = json.loads((resolve_checkpoint(tmp_path / "run") / "run.json").read_text())["train"]
    assert train["batch_size"] * train["grad_accum"] == 64  # pretrain's default 32 rows x --grad-accum 2
    for bad in ("0", "many"):
        with pytest.raises(SystemExit):
            main(argv[:-3] + [bad])
    assert "a positive integer or 'auto'" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measuring GPU memory needs a CUDA GPU")
def test_cuda_probe_fits_and_refuses(tok):
    model = tiny_model(tok).cuda()
    dev = torch.device("cuda")
    assert ab.cuda_fits(model, 4, 64, dev, torch.bfloat16, 0)
    total = torch.cuda.get_device_properties(dev).total_memory
    assert not ab.cuda_fits(model, 4, 64, dev, torch.bfloat16, total)  # no room left for the optimizer
    assert all(p.grad is None for p in model.parameters())
