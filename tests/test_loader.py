"""Loaders: packing without padding, labels from masks, length bucketing, determinism,
exact resume, and rank slicing that matches a single process."""

import json
import random

import numpy as np
import pytest
import torch

from minimind.data.loader import DPOLoader, PretrainLoader, SFTLoader, make_loader
from minimind.data.prepare import load_prepared, prepare
from minimind.errors import UserError
from minimind.tokenizer import train_tokenizer

WORDS = ("a story about the moon the sun and seven stars water is wet fire is hot one plus two is three "
         "the capital of japan is tokyo birds can fly fish can swim").split()


def _text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Prepared pretrain, sft (varied lengths) and dpo datasets, shared by all tests."""
    d = tmp_path_factory.mktemp("loader")
    rng = random.Random(0)
    docs = _write_jsonl(d / "pre.jsonl", [{"text": _text(rng, 3, 80)} for _ in range(150)])
    tok = train_tokenizer([docs], d / "tok", vocab_size=350)
    convs = []
    for i in range(320):
        msgs = []
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            msgs += [{"role": "user", "content": _text(rng, 1, 15)},
                     {"role": "assistant", "content": _text(rng, 1, rng.choice([5, 20, 60]))}]
        convs.append({"conversations": msgs})
    sft = _write_jsonl(d / "sft.jsonl", convs)
    pairs = []
    for i in range(60):
        q = {"role": "user", "content": f"{i} " + _text(rng, 1, 10)}
        pairs.append({"chosen": [q, {"role": "assistant", "content": _text(rng, 1, 30)}],
                      "rejected": [q, {"role": "assistant", "content": _text(rng, 1, 8)}]})
    dpo = _write_jsonl(d / "dpo.jsonl", pairs)
    for name, src in (("pre", docs), ("sft", sft), ("dpo", dpo)):
        prepare(src, tok, d / name, progress=False)
    return {name: load_prepared(d / name) for name in ("pre", "sft", "dpo")}


def take(loader, n):
    return [next(loader) for _ in range(n)]


def same_batches(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


# ----------------------------------------------------------------------------- pretrain

def test_pretrain_windows_cover_the_stream_once_without_padding(prepared):
    data, T = prepared["pre"], 32
    stream = data.docs.tokens.astype(np.int64)
    n_windows = len(stream) // (T + 1)
    loader = PretrainLoader(data, batch_size=1, seq_len=T, seed=0)
    assert len(loader) == n_windows and len(stream) - n_windows * (T + 1) < T + 1
    rows = []
    for batch in take(loader, len(loader)):
        x, y = batch["input_ids"], batch["labels"]
        assert x.shape == y.shape == (1, T) and x.dtype == y.dtype == torch.int64
        assert torch.equal(x[0, 1:], y[0, :-1])  # labels are the inputs shifted by one
        assert batch["n_tokens"].item() == T and (y != -100).all()  # 100% real tokens
        rows.append(tuple(x[0].tolist()) + (y[0, -1].item(),))
    # the multiset of windows seen is exactly the stream cut into consecutive windows
    expected = [tuple(w) for w in stream[: n_windows * (T + 1)].reshape(n_windows, T + 1).tolist()]
    assert sorted(rows) == sorted(expected)
    assert rows != expected  # and the order is shuffled


def test_pretrain_batches_reshuffle_each_epoch(prepared):
    loader = PretrainLoader(prepared["pre"], batch_size=4, seq_len=16, seed=1)
    n = len(loader)
    windows = len(prepared["pre"].docs.tokens) // 17
    assert n == windows // 4
    first = take(loader, n)
    assert loader.epoch == 0
    second = take(loader, n)
    assert loader.epoch == 1
    rows = lambda bs: sorted(tuple(r) for b in bs for r in b["input_ids"].tolist())
    assert len(set(rows(first))) == n * 4  # no window twice in an epoch
    assert not same_batches(first, second)
    assert len(set(rows(first)) ^ set(rows(second))) <= 2 * (windows - 4 * n)  # only dropped windows differ


# ----------------------------------------------------------------------------- sft

def _find(row, table):
    """The key of `table` that `row` holds, followed only by padding (id 0)."""
    return next(k for k in table if table[k] and tuple(row[: len(k)]) == k and not any(row[len(k):]))


def _expected_rows(data, max_len):
    """input prefix -> expected labels, computed from the prepared ids and mask directly."""
    out = {}
    for i in range(len(data.docs)):
        ids, mask = data.docs.ids(i)[: max_len + 1].tolist(), data.docs.loss_mask(i)[: max_len + 1].tolist()
        labels = [ids[t + 1] if mask[t + 1] else -100 for t in range(len(ids) - 1)]
        out.setdefault(tuple(ids[:-1]), []).append(labels)
    return out


@pytest.mark.parametrize("max_len", [256, 24])
def test_sft_labels_follow_the_mask_and_cover_every_conversation(prepared, max_len):
    data = prepared["sft"]
    loader = SFTLoader(data, batch_size=4, max_seq_len=max_len, seed=0, pack=False)
    expected = _expected_rows(data, max_len)
    seen, real, processed = 0, 0, 0
    for batch in take(loader, len(loader)):
        x, y = batch["input_ids"], batch["labels"]
        assert x.numel() <= 4 * max_len and x.shape[1] <= max_len  # padded-token budget
        for row_x, row_y in zip(x.tolist(), y.tolist()):
            key = _find(row_x, expected)
            n = len(key)
            assert row_y[:n] in expected[key]  # (cut conversations may share their input)
            expected[key].remove(row_y[:n])  # each conversation is used once
            assert row_y[n:] == [-100] * (len(row_y) - n)  # padding is never trained
            real += n
        assert batch["n_tokens"].item() == (y != -100).sum().item()
        seen += x.shape[0]
        processed += x.numel()
    assert seen == len(data.docs) and not any(expected.values())  # every conversation exactly once
    assert real / processed == pytest.approx(loader.efficiency(0))


def test_sft_bucketing_wastes_little_padding(prepared):
    data = prepared["sft"]
    lengths = data.docs.lengths()
    assert lengths.min() * 5 < lengths.max()  # the conversations really vary in length
    loader = SFTLoader(data, batch_size=4, max_seq_len=256, seed=0, pack=False)
    assert loader.padding_efficiency >= 0.9
    assert loader.efficiency(epoch=3) >= 0.9
    rows = [b["input_ids"].shape[0] for b in take(loader, len(loader))]
    assert max(rows) > 4  # short conversations make bigger batches under the same budget
    # without bucketing (random groups of 4 padded to their longest) much more is wasted
    rng = np.random.default_rng(0)
    groups = rng.permutation(len(lengths)).reshape(-1, 4)
    naive = (lengths[groups] - 1).sum() / (4 * (lengths[groups] - 1).max(axis=1)).sum()
    assert naive < loader.padding_efficiency - 0.1


def test_sft_packing_covers_every_conversation_once_with_little_padding(prepared):
    data = prepared["sft"]
    max_len = 256
    loader = SFTLoader(data, batch_size=4, max_seq_len=max_len, seed=0)
    expected = _expected_rows(data, max_len)
    real = processed = n_convs = 0
    for batch in take(loader, len(loader)):
        x, y, seg = batch["input_ids"], batch["labels"], batch["segments"]
        assert x.shape[0] <= 4 and x.shape[1] <= max_len  # rows never exceed the budget
        for row_x, row_y, row_s in zip(x.tolist(), y.tolist(), seg.tolist()):
            for s in sorted(set(row_s) - {-1}):
                cols = [i for i, v in enumerate(row_s) if v == s]
                assert cols == list(range(cols[0], cols[-1] + 1))  # a conversation is contiguous
                part_x = row_x[cols[0]:cols[-1] + 1]
                part_y = row_y[cols[0]:cols[-1] + 1]
                key = _find(part_x, expected)
                assert len(key) == len(part_x) and part_y in expected[key]
                expected[key].remove(part_y)
                n_convs += 1
            assert all(v == -100 for v, s in zip(row_y, row_s) if s == -1)  # padding never trained
            real += sum(s != -1 for s in row_s)
        processed += x.numel()
        assert batch["n_tokens"].item() == (y != -100).sum().item()
    assert n_convs == len(data.docs) and not any(expected.values())  # every conversation exactly once
    assert real / processed == pytest.approx(loader.efficiency(0))
    assert loader.efficiency(0) >= 0.9


# ----------------------------------------------------------------------------- dpo

def test_dpo_pairs_stay_aligned_and_share_a_length(prepared):
    data = prepared["dpo"]
    loader = DPOLoader(data, batch_size=4, max_seq_len=512, seed=0)
    assert max(data.chosen.lengths().max(), data.rejected.lengths().max()) <= 513  # nothing cut here
    seen = []
    for batch in take(loader, len(loader)):
        assert set(batch) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "n_tokens",
                              "index"}
        assert batch["chosen_input_ids"].shape == batch["rejected_input_ids"].shape
        rows = {}
        for side in ("chosen", "rejected"):
            part = data.parts[side]
            # input ids of record i -> [i]: each record's text holds its index, so keys are unique
            table = {tuple(part.ids(i)[:-1].tolist()): [i] for i in range(len(data))}
            x, y = batch[f"{side}_input_ids"], batch[f"{side}_labels"]
            rows[side] = []
            for r in range(x.shape[0]):
                i = table[_find(x[r].tolist(), table)][0]
                ids, mask = part.ids(i).tolist(), part.loss_mask(i).tolist()
                want = [ids[t + 1] if mask[t + 1] else -100 for t in range(len(ids) - 1)]
                assert y[r, : len(want)].tolist() == want and (y[r, len(want):] == -100).all()
                rows[side].append(i)
        assert rows["chosen"] == rows["rejected"]  # the two halves of a pair on the same row
        assert batch["index"].tolist() == rows["chosen"]  # each row's record index (DPO's reference cache key)
        seen += rows["chosen"]
        n = (batch["chosen_labels"] != -100).sum() + (batch["rejected_labels"] != -100).sum()
        assert batch["n_tokens"].item() == n.item()
    assert sorted(seen) == list(range(len(data)))


# ----------------------------------------------------------------------------- common

LOADER_CASES = [
    ("pre", lambda d, **kw: PretrainLoader(d, batch_size=3, seq_len=16, **kw)),
    ("sft", lambda d, **kw: SFTLoader(d, batch_size=3, max_seq_len=64, **kw)),
    ("dpo", lambda d, **kw: DPOLoader(d, batch_size=2, max_seq_len=64, **kw)),
]


@pytest.mark.parametrize("name,make", LOADER_CASES)
def test_determinism_by_seed(prepared, name, make):
    a, b, c = (make(prepared[name], seed=s) for s in (7, 7, 8))
    first = take(a, 6)
    assert same_batches(first, take(b, 6))
    assert not same_batches(first, take(c, 6))


@pytest.mark.parametrize("name,make", LOADER_CASES)
def test_resume_yields_exactly_the_next_batches(prepared, name, make):
    data = prepared[name]
    for k in (3, len(make(data, seed=0)) - 1):  # mid-epoch, and just before an epoch ends
        loader = make(data, seed=0)
        take(loader, k)
        state = json.loads(json.dumps(loader.state_dict()))  # survives a checkpoint as JSON
        expected = take(loader, 4)
        resumed = make(data, seed=0)
        resumed.load_state_dict(state)
        assert same_batches(take(resumed, 4), expected)
        assert resumed.epoch == loader.epoch
    other = make(data, seed=1)
    with pytest.raises(UserError, match="seed"):
        other.load_state_dict(state)


@pytest.mark.parametrize("name,make", LOADER_CASES[:2])
def test_a_position_converts_to_another_batch_size(prepared, name, make):
    """Pretraining windows and packed SFT rows come in an order that does not depend on the batch
    size: resuming with batches of 1 continues with exactly the rows that were next."""
    data = prepared[name]
    loader = make(data, seed=0)
    take(loader, 2)
    state = loader.state_dict()
    nxt = take(loader, 1)[0]  # 3 rows
    resumed = SFTLoader(data, 1, 64, seed=0) if name == "sft" else PretrainLoader(data, 1, 16, seed=0)
    resumed.load_state_dict(state)
    singles = take(resumed, 3)
    for r, single in enumerate(singles):
        w = single["input_ids"].shape[1]
        for key in ("input_ids", "labels", *(("segments",) if name == "sft" else ())):
            assert torch.equal(single[key][0], nxt[key][r, :w])
    with pytest.raises(UserError, match="batch_size"):  # length buckets depend on the batch size: refused
        DPOLoader(prepared["dpo"], 4, 64, seed=0).load_state_dict(make_dpo_state(prepared))


def make_dpo_state(prepared):
    return DPOLoader(prepared["dpo"], 2, 64, seed=0).state_dict()


@pytest.mark.parametrize("name,make", LOADER_CASES)
def test_two_ranks_cover_what_one_process_sees(prepared, name, make):
    data = prepared[name]
    single = make(data, seed=3)
    ranks = [make(data, seed=3, rank=r, world_size=2) for r in (0, 1)]
    n = len(ranks[0])
    assert len(ranks[1]) == n == len(single) // 2
    ones = take(single, 2 * n)
    per_rank = [take(r, n) for r in ranks]
    # step i: rank 0 and rank 1 do what one process does in micro-steps 2i and 2i+1
    assert same_batches(per_rank[0], ones[0::2])
    assert same_batches(per_rank[1], ones[1::2])
    assert ranks[0].state_dict() == ranks[1].state_dict()


def test_make_loader_and_bad_arguments(prepared):
    assert type(make_loader(prepared["pre"], 2, 16)) is PretrainLoader
    assert type(make_loader(prepared["sft"], 2, 64)) is SFTLoader
    assert type(make_loader(prepared["dpo"].path, 2, 64)) is DPOLoader
    with pytest.raises(UserError, match="needs a sft dataset"):
        SFTLoader(prepared["pre"], batch_size=2, max_seq_len=64)
    with pytest.raises(UserError, match="fewer than batch_size"):
        PretrainLoader(prepared["pre"], batch_size=10_000, seq_len=64)
    with pytest.raises(UserError, match="rank 2"):
        SFTLoader(prepared["sft"], batch_size=2, max_seq_len=64, rank=2, world_size=2)
    with pytest.raises(UserError, match="batch_size must be a positive"):
        make_loader(prepared["sft"], 0, 64)
