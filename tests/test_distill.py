"""Distillation: the loss against its definition, KL = 0 for identical models, frozen teacher,
vocabulary checks, and a short real run whose loss goes down."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from minimind.checkpoint import resolve_checkpoint, save_checkpoint
from minimind.cli import main
from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.model import MiniMindForCausalLM
from minimind.tokenizer import Tokenizer, train_tokenizer
from minimind.train.distill import Distillation, check_same_vocabulary, distill_loss


def tiny(tok, seed=0, hidden=64, init=0.02):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, initializer_range=init))


def batch(vocab, B=3, T=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (B, T), generator=g)
    labels = ids.roll(-1, 1)
    labels[:, :5] = -100  # a "prompt" that is not trained
    labels[:, -1] = -100
    return {"input_ids": ids, "labels": labels, "n_tokens": (labels != -100).sum()}


def test_loss_matches_its_definition():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(7, 11, generator=g), torch.randn(7, 11, generator=g) * 3  # (N, V)
    y = torch.randint(0, 11, (7,), generator=g)
    T, alpha = 2.0, 0.3
    loss, ce, kl = distill_loss(s, t, y, alpha, T)
    p = F.softmax(t / T, -1)
    want_kl = F.kl_div(F.log_softmax(s / T, -1), p, reduction="batchmean")  # torch's own KL(p || q)
    assert kl.item() == pytest.approx(want_kl.item(), rel=1e-5)
    assert ce.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert loss.item() == pytest.approx(alpha * ce.item() + (1 - alpha) * T * T * want_kl.item(), rel=1e-5)
    assert distill_loss(s, t, y, 1.0, T)[0].item() == pytest.approx(ce.item(), rel=1e-6)  # alpha=1: plain SFT


def test_kl_is_zero_for_an_identical_student_and_teacher_is_frozen(tok):
    student = tiny(tok)
    same = Distillation(copy.deepcopy(student), alpha=0.5, temperature=2.0)
    b = batch(tok.vocab_size)
    loss, m = same.loss(student, b)
    assert m["kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * m["ce"].item(), rel=1e-5)
    other = Distillation(tiny(tok, seed=1), alpha=0.5, temperature=2.0)
    loss, m = other.loss(student, b)
    assert m["kl"].item() > 1e-4
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in other.teacher.parameters())
    assert not other.teacher.training
    assert all(p.grad is not None for p in student.parameters())


def test_held_out_evaluation_reports_plain_cross_entropy(tok):
    student = tiny(tok)
    b = batch(tok.vocab_size)
    objective = Distillation(tiny(tok, seed=1), alpha=0.5)
    loss, m = objective.eval_loss(student, b)  # the engine calls eval_loss for held-out batches
    train_loss, train_m = objective.loss(student.eval(), b)  # the training loss never depends on model.training
    assert "kl" in train_m and abs(train_loss.item() - loss.item()) > 1e-4
    with torch.no_grad():
        ce = F.cross_entropy(student(b["input_ids"]).logits.flatten(0, 1), b["labels"].flatten(), ignore_index=-100)
    assert loss.item() == pytest.approx(ce.item(), rel=1e-5) and "kl" not in m


def test_bad_settings_refused(tok):
    with pytest.raises(UserError, match="--alpha"):
        Distillation(tiny(tok), alpha=1.5)
    with pytest.raises(UserError, match="--temperature"):
        Distillation(tiny(tok), temperature=0)


def test_vocabulary_mismatch_refused(corpus, tok, tmp_path):
    train_tokenizer([corpus / "sft.jsonl"], tmp_path / "tok2", vocab_size=tok.vocab_size, progress=False)
    other = Tokenizer.load(tmp_path / "tok2")
    assert other.vocab_size == tok.vocab_size and other.fingerprint() != tok.fingerprint()
    model = tiny(tok)
    with pytest.raises(UserError, match="tokenizer .* differs"):
        check_same_vocabulary(model.config, tok, model.config, other, "here")
    small = ModelConfig(vocab_size=500, hidden_size=64, num_hidden_layers=1, num_attention_heads=4)
    with pytest.raises(UserError, match="vocab_size 800 != student vocab_size 500"):
        check_same_vocabulary(model.config, tok, small, tok, "here")
    # the command refuses too, with one line and exit code 2
    save_checkpoint(tmp_path / "teacher", model, tok)
    save_checkpoint(tmp_path / "student", tiny(other), other)
    argv = ["distill", "--teacher", str(tmp_path / "teacher"), "--init", str(tmp_path / "student"),
            "--data", str(corpus / "sft.jsonl"), "--out", str(tmp_path / "run"), "--no-progress"]
    assert main(argv) == 2


def test_cli_distill_loss_decreases(corpus, tok, tmp_path):
    # a teacher that is a confident bigram model: large random embeddings, and no attention/MLP
    # output, so its next-token distribution depends on the current token only (quick to learn)
    teacher = tiny(tok, seed=3, hidden=96, init=0.3)
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                p.zero_()
    save_checkpoint(tmp_path / "teacher", teacher, tok)
    argv = ["distill", "--teacher", str(tmp_path / "teacher"), "--data", str(corpus / "sft.jsonl"),
            "--out", str(tmp_path / "run"), "--preset", "nano", "--hidden-size", "64", "--num-layers", "2",
            "--num-heads", "4", "--num-kv-heads", "2", "--steps", "30", "--batch-size", "8",
            "--max-seq-len", "96", "--lr", "1e-2", "--warmup", "2", "--log-every", "1", "--dtype", "fp32",
            "--no-progress", "--alpha", "0.5", "--temperature", "2"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if '"loss"' in line]
    def mean(key, part):
        return sum(r[key] for r in part) / len(part)

    first, last = rows[:5], rows[-5:]  # batches differ in content: compare averages
    assert mean("loss", last) < 0.75 * mean("loss", first)
    assert mean("kl", last) < 0.75 * mean("kl", first)
    run = json.loads((resolve_checkpoint(tmp_path / "run") / "run.json").read_text())
    assert run["stage"] == "distill" and run["train"]["extra"]["temperature"] == 2.0


def test_packed_rows_are_seen_one_conversation_at_a_time(tok):
    """SFT packs several conversations per row: teacher and student must see each one alone
    (positions from 0, no attention across them), exactly as if it were its own row."""
    from minimind.train.pretrain import LanguageModeling, packed_inputs

    g = torch.Generator().manual_seed(4)
    a, b = torch.randint(3, tok.vocab_size, (7,), generator=g), torch.randint(3, tok.vocab_size, (9,), generator=g)
    ids = torch.cat([a, b])[None]  # (1, 16): two sequences in one row
    segments = torch.tensor([[0] * 7 + [1] * 9])
    labels = torch.cat([a[1:], torch.tensor([-100]), b[1:], torch.tensor([-100])])[None]
    packed = {"input_ids": ids, "labels": labels, "segments": segments, "n_tokens": (labels != -100).sum()}
    teacher, student = tiny(tok, seed=1), tiny(tok, seed=2)
    d = Distillation(teacher, alpha=0.5, temperature=2.0)
    keep = labels != -100
    got = d.teacher_logits(ids, keep, packed_inputs(packed))  # (14, V)
    with torch.no_grad():
        alone = torch.cat([teacher(a[None]).logits[0, :-1], teacher(b[None]).logits[0, :-1]])  # (14, V)
    torch.testing.assert_close(got, alone, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        ce_distill = d.eval_loss(student, packed)[0]
        ce_sft = LanguageModeling().loss(student, packed)[0]
        nll = torch.cat([F.cross_entropy(student(x[None]).logits[0, :-1], x[1:], reduction="none") for x in (a, b)])
    assert ce_distill.item() == pytest.approx(ce_sft.item(), rel=1e-5)
    assert ce_distill.item() == pytest.approx(nll.mean().item(), rel=1e-5)
