"""Muon: Newton-Schulz orthogonalisation and training through the engine."""

import torch

from minimind.train.muon import newton_schulz5
from tests.test_engine import losses, pretrain


def test_newton_schulz_makes_singular_values_near_one():
    torch.manual_seed(0)
    for m, n in [(64, 256), (256, 64), (128, 128)]:
        k = min(m, n)
        U, _ = torch.linalg.qr(torch.randn(m, k))
        V, _ = torch.linalg.qr(torch.randn(n, k))
        sv = torch.logspace(-1, 1, k)  # singular values spread over two decades
        s = torch.linalg.svdvals(newton_schulz5(U @ torch.diag(sv) @ V.T).float())
        assert s.min() > 0.5 and s.max() < 1.3, ((m, n), s.min(), s.max())


def test_muon_trains_and_resumes(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "a", "--steps", "8", "--optimizer", "muon")
    pretrain(corpus, tokenizer_dir, tmp_path / "b", "--steps", "8", "--optimizer", "muon", "--stop-after", "4")
    pretrain(corpus, tokenizer_dir, tmp_path / "b", "--steps", "8", "--optimizer", "muon", "--resume")
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a[8] < a[1] - 0.1
    assert [a[s] for s in range(1, 9)] == [b[s] for s in range(1, 9)]


def test_target_loss_stops_early(corpus, tokenizer_dir, tmp_path):
    pretrain(corpus, tokenizer_dir, tmp_path / "t", "--steps", "200", "--eval-every", "5", "--target-loss", "7.0",
             "--eval-data", str(corpus / "eval" / "heldout_pretrain.jsonl"))
    rows = losses(tmp_path / "t")
    assert max(rows) < 200 and max(rows) % 5 == 0
