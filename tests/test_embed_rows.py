"""--embed-rows seen: a step changes only the embedding rows of the tokens its training forwards read;
plain training (all) moves every row through the tied output layer."""

import pytest
import torch

from minimind.data.loader import make_loader
from minimind.train.embed_rows import EmbedRows
from minimind.train.engine import TrainConfig, Trainer
from minimind.train.pretrain import LanguageModeling
from tests.conftest import tiny_model

READ = list(range(10, 30))  # the only tokens the batches contain


def batch(rows=2, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor(READ)[torch.randint(len(READ), (rows, length + 1), generator=g)]
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "n_tokens": rows * length}


def trainer(tok, data, tmp_path, embed_rows, **kw):
    cfg = TrainConfig(out_dir=str(tmp_path / embed_rows), batch_size=2, lr=1e-2, warmup=0, dtype="fp32",
                      device="cpu", progress=False, embed_rows=embed_rows, **kw)
    return Trainer(tiny_model(tok), LanguageModeling(), make_loader(data, 2, 32, seed=0), tok, cfg)


def rows_moved(t: Trainer, steps: int, grad_accum_batches=1) -> tuple[torch.Tensor, torch.Tensor]:
    """How far each embedding row moved in `steps` steps, and which rows the inputs read."""
    before = t.raw_model.model.embed_tokens.weight.detach().clone()
    read = torch.zeros(len(before), dtype=torch.bool)
    for s in range(steps):
        batches = [batch(seed=10 * s + a) for a in range(grad_accum_batches)]
        for b in batches:
            read[b["input_ids"].flatten()] = True
        t.train_step(iter(batches))
    return (t.raw_model.model.embed_tokens.weight.detach() - before).abs().amax(dim=1), read


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_seen_moves_exactly_the_rows_read(tok, pretrain_data, tmp_path, grad_accum):
    moved, read = rows_moved(trainer(tok, pretrain_data, tmp_path, "seen", grad_accum=grad_accum), 3, grad_accum)
    assert read.sum() >= 15
    assert moved[~read].max().item() == 0.0  # bit-identical: pretraining's rows survive
    assert (moved[read] > 1e-4).all()  # every row read was trained (lr 1e-2)


def test_all_moves_unread_rows_through_the_tied_output_layer(tok, pretrain_data, tmp_path):
    moved, read = rows_moved(trainer(tok, pretrain_data, tmp_path, "all"), 3)
    # Adam normalises the small, steady push-down of the softmax: unread rows move by about lr per step
    assert moved[~read].median().item() > 1e-3


def test_forwards_without_a_graph_are_not_reads(tok):
    model = tiny_model(tok)
    rows = EmbedRows(model, "seen")
    rows.start_step()
    with torch.no_grad():  # a rollout, an evaluation or a reference pass
        model(torch.tensor([[40, 41, 42]]))
    assert not rows.seen.any()
    model(torch.tensor([[5, 6]]))
    assert rows.seen.nonzero().flatten().tolist() == [5, 6]


def test_frozen_embedding_and_plain_mode_do_nothing(tok):
    model = tiny_model(tok)
    assert not EmbedRows(model, "all").active
    model.model.embed_tokens.weight.requires_grad_(False)  # LoRA freezes the base
    assert not EmbedRows(model, "seen").active
    with pytest.raises(ValueError, match="all, seen"):
        EmbedRows(model, "some")


@pytest.mark.parametrize("argv, mode", [(["sft"], "seen"), (["dpo"], "seen"), (["lora"], "seen"),
                                        (["pretrain"], "all"), (["grpo"], "all"), (["sft", "--embed-rows", "all"], "all")])
def test_fine_tuning_commands_default_to_seen(argv, mode):
    from minimind.cli import build_parser

    args = build_parser().parse_args([argv[0], "--data", "x.jsonl", "--out", "o", "--init", "i", *argv[1:]])
    assert args.embed_rows == mode


def test_an_untied_output_layer_keeps_its_unread_rows_too(tok, pretrain_data, tmp_path):
    model = tiny_model(tok, tie_word_embeddings=False)
    cfg = TrainConfig(out_dir=str(tmp_path / "untied"), batch_size=2, lr=1e-2, warmup=0, dtype="fp32", device="cpu",
                      progress=False, embed_rows="seen", weight_decay=0.0)  # the head is a decayed matrix otherwise
    t = Trainer(model, LanguageModeling(), make_loader(pretrain_data, 2, 32, seed=0), tok, cfg)
    head_before = model.lm_head.weight.detach().clone()
    moved, read = rows_moved(t, 3)
    head_moved = (model.lm_head.weight.detach() - head_before).abs().amax(dim=1)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert moved[~read].max().item() == 0.0 and head_moved[~read].max().item() == 0.0
    assert (head_moved[read] > 1e-4).all()
