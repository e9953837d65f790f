"""Two gloo processes under torchrun: --target-loss stops every rank at the same step (the held-out
loss is all-reduced), data is prepared under a file lock before the process group, and a LoRA run
is written once, by rank 0, and loads as a merged model."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minimind.checkpoint import load_checkpoint, load_train_state, resolve_checkpoint
from minimind.data.loader import SFTLoader
from minimind.data.prepare import load_prepared
from minimind.train.sft import SupervisedFineTuning
from tests.test_engine import free_port
from tests.test_lora import lora_base

ROOT = Path(__file__).resolve().parents[1]


def torchrun(*argv, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "minimind.cli", *map(str, argv)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)  # a hang fails here
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def evals(run: Path) -> dict:
    return {r["step"]: r["eval_loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if "eval_loss" in r}


@pytest.mark.slow
def test_target_loss_stops_all_ranks_together_and_lora_saves_once(corpus, tok, tmp_path):
    base = lora_base(tok, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "lora.jsonl").write_bytes((corpus / "lora_identity.jsonl").read_bytes())  # not prepared yet
    common = ["lora", "--init", base, "--data", data / "lora.jsonl", "--eval-data", data / "lora.jsonl",
              "--batch-size", "4", "--max-seq-len", "64", "--dtype", "fp32", "--device", "cpu", "--rank", "4",
              "--lr", "1e-2", "--eval-every", "2", "--eval-batches", "2", "--log-every", "1", "--steps", "8",
              "--no-progress"]
    torchrun(*common, "--out", tmp_path / "a")  # both ranks prepare the data at once: one does, one waits
    full = evals(tmp_path / "a")
    assert sorted(full) == [2, 4, 6, 8]
    target = full[4]
    stop = min(s for s in sorted(full) if full[s] <= target)  # the first evaluation that reaches it
    torchrun(*common, "--out", tmp_path / "b", "--target-loss", target)
    rows = [json.loads(line) for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert max(r["step"] for r in rows) == stop and rows[-1].get("target_reached")
    assert evals(tmp_path / "b") == {s: full[s] for s in full if s <= stop}  # same all-reduced losses
    ckpt = resolve_checkpoint(tmp_path / "b")
    assert ckpt.name == f"step-{stop:07d}" and (ckpt / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["adapter", "checkpoint", "metrics.jsonl"]
    st = load_train_state(ckpt)  # every rank's RNG and data position, one entry per rank
    assert len(st["rng"]) == len(st["data"]) == 2
    assert not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])  # seeded seed + rank
    assert not [p for p in (tmp_path / "b").rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    merged, _ = load_checkpoint(tmp_path / "b")
    x = torch.tensor([tok.encode("Who are you?")])
    with torch.no_grad():
        assert (merged(x).logits - load_checkpoint(base)[0](x).logits).abs().max() > 0
    # the logged loss is the mean over both ranks' held-out batches (rank r reads batches r, r + 2)
    prepared = load_prepared(next(data.glob("prepared/lora-sft-*")))
    loader = SFTLoader(prepared, 4, 64, seed=0)
    with torch.no_grad():
        mean = sum(SupervisedFineTuning().loss(merged, next(loader))[0].item() for _ in range(4)) / 4
    assert evals(tmp_path / "b")[stop] == pytest.approx(mean, abs=1e-4)


@pytest.mark.slow
def test_embed_rows_seen_keeps_the_union_of_both_ranks_reads(corpus, tok, tmp_path):
    """`--embed-rows seen` under DDP: a row read by either rank is trained on both (the read masks
    are all-reduced), a row neither read stays bit-identical. Rank r reads global batch r."""
    base = lora_base(tok, tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    (data / "sft.jsonl").write_bytes((corpus / "sft.jsonl").read_bytes())
    torchrun("sft", "--init", base, "--data", data / "sft.jsonl", "--out", tmp_path / "run", "--batch-size", "2",
             "--max-seq-len", "64", "--dtype", "fp32", "--device", "cpu", "--steps", "1", "--lr", "1e-2",
             "--warmup", "0", "--weight-decay", "0", "--embed-rows", "seen", "--seed", "0", "--no-progress")
    loader = SFTLoader(load_prepared(next(data.glob("prepared/sft-sft-*"))), 2, 64, seed=0)
    reads = []
    for _ in range(2):  # global batches 0 and 1: what rank 0 and rank 1 read in step 1
        ids = next(loader)["input_ids"].flatten()
        read = torch.zeros(tok.vocab_size, dtype=torch.bool)
        read[ids[ids != tok.pad_id]] = True
        reads.append(read)
    only_rank1 = reads[1] & ~reads[0]
    assert only_rank1.sum() >= 5  # the ranks read different tokens
    before = load_checkpoint(base)[0].model.embed_tokens.weight
    after = load_checkpoint(tmp_path / "run")[0].model.embed_tokens.weight  # saved by rank 0
    moved = (after - before).abs().amax(dim=1) > 0
    assert moved[only_rank1].all()  # rank 1's reads reached rank 0's weights
    unread = ~(reads[0] | reads[1])
    unread[tok.pad_id] = False  # padding is read but trains nothing
    assert unread.sum() > tok.vocab_size // 2 and not moved[unread].any()  # and nothing else moved
