"""DPO: the loss on hand-computed numbers, a frozen reference, the cache, and learning on real pairs."""

import copy
import json
import math

import pytest
import torch

from minimind.config import ModelConfig
from minimind.data.loader import DPOLoader
from minimind.data.prepare import load_prepared, prepare
from minimind.model import MiniMindForCausalLM
from minimind.train.dpo import DirectPreferenceOptimization, dpo_loss, preference_accuracy, sequence_logps


@pytest.fixture(scope="module")
def pairs(corpus, tok, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo")
    lines = (corpus / "dpo.jsonl").read_text(encoding="utf-8").splitlines()[:48]  # small: fast tests
    (out / "pairs.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(out / "pairs.jsonl", tok, out / "prepared", kind="dpo", max_seq_len=64, progress=False)
    return load_prepared(out / "prepared")


def tiny(tok, seed=0):
    torch.manual_seed(seed)
    return MiniMindForCausalLM(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id))


def test_loss_on_hand_computed_logps():
    pi_w, pi_l = torch.tensor([-5.0, -3.0]), torch.tensor([-7.0, -2.0])
    ref_w, ref_l = torch.tensor([-6.0, -3.5]), torch.tensor([-6.0, -2.5])
    loss, r_w, r_l = dpo_loss(pi_w, pi_l, ref_w, ref_l, beta=0.1)
    # pair 1: policy margin 2, reference margin 0   -> z = 0.1 * 2    = 0.2
    # pair 2: policy margin -1, reference margin -1 -> z = 0.1 * 0    = 0.0
    want = (math.log(1 + math.exp(-0.2)) + math.log(2)) / 2  # -log sigmoid(z) = log(1 + e^-z)
    assert loss.item() == pytest.approx(want, rel=1e-6)
    assert r_w.tolist() == pytest.approx([0.1, 0.05]) and r_l.tolist() == pytest.approx([-0.1, 0.05])


def test_sequence_logps_sum_over_labelled_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))  # (1, 3, 3)
    labels = torch.tensor([[-100, 1, 2]])  # the first position is a prompt token
    logp, n = sequence_logps(logits, labels)
    assert logp.item() == pytest.approx(math.log(0.8) + math.log(0.6), rel=1e-6)
    assert n.tolist() == [2]


def test_reference_gets_no_grads_and_policy_learns(pairs, tok):
    policy = tiny(tok)
    obj = DirectPreferenceOptimization(copy.deepcopy(policy), beta=0.5, ref_mode="step")
    loader = DPOLoader(pairs, batch_size=8, max_seq_len=64, seed=0)
    batches = [next(loader) for _ in range(2)]  # 2 fixed batches = the "training pairs"
    ref_before = {k: v.clone() for k, v in obj.ref.state_dict().items()}

    def accuracy():
        wins = n = 0
        with torch.no_grad():
            for b in batches:
                lp = sequence_logps(policy(torch.cat([b["chosen_input_ids"], b["rejected_input_ids"]])).logits,
                                    torch.cat([b["chosen_labels"], b["rejected_labels"]]))[0]
                B = b["chosen_labels"].shape[0]
                wins, n = wins + int((lp[:B] > lp[B:]).sum()), n + B
        return wins / n

    loss0, m0 = obj.loss(policy, batches[0])
    assert loss0.item() == pytest.approx(math.log(2), abs=1e-5)  # pi = pi_ref: every margin is 0
    assert m0["reward_margin"].item() == pytest.approx(0.0, abs=1e-5)
    acc0 = accuracy()
    losses = []
    for step in range(16):
        loss, m = obj.loss(policy, batches[step % 2])
        loss.backward()
        with torch.no_grad():  # plain SGD: enough here, and no optimizer machinery to import
            for p in policy.parameters():
                p -= 0.3 * p.grad
                p.grad = None
        losses.append(loss.item())
    assert all(p.grad is None and not p.requires_grad for p in obj.ref.parameters())
    assert not obj.ref.training
    assert all(torch.equal(v, ref_before[k]) for k, v in obj.ref.state_dict().items())
    acc1 = accuracy()
    # by sequence log-prob alone the policy now prefers the chosen answer of most training pairs
    # (~0.6 -> ~0.8: DPO moves each pair relative to the reference, so a pair the reference strongly
    # mis-ranks, e.g. a rejected sum that differs from the chosen one in a single digit, can stay
    # mis-ranked in absolute terms while its reward margin is already right)
    assert acc1 >= 0.8 and acc1 >= acc0 + 0.2, (acc0, acc1)
    assert losses[-1] < 0.25 * losses[0]
    assert m["reward_acc"].item() == 1.0  # relative to the reference, every pair is ranked right


def test_cache_scores_each_pair_once_with_the_same_values(pairs, tok):
    policy = tiny(tok)
    step = DirectPreferenceOptimization(copy.deepcopy(policy), ref_mode="step")
    cache = DirectPreferenceOptimization(copy.deepcopy(policy), ref_mode="cache")
    loader = DPOLoader(pairs, batch_size=16, max_seq_len=64, seed=0)
    n_pairs = sum(len(b) for b in loader.plan(0))
    with torch.no_grad():
        for _ in range(2 * len(loader)):  # two epochs: the second reshuffles and re-pads the pairs
            b = next(loader)
            for (a, c) in zip(step.reference(b), cache.reference(b)):
                assert torch.allclose(a, c, atol=1e-4)
    assert step.ref_forwards == 2 * n_pairs
    assert cache.ref_forwards == n_pairs
    assert cache.cache.shape == (len(pairs), 2) and cache.cache.dtype == torch.float32  # 8 bytes a pair
    assert not cache.cache.isnan().any()  # every record index scored


def test_cache_is_keyed_by_record_index_and_saved(pairs, tok):
    """The cache maps record index -> (ref chosen, ref rejected); it goes into checkpoints, and held-out
    evaluation (other records, other indices) never reads it."""
    policy = tiny(tok)
    dpo = DirectPreferenceOptimization(copy.deepcopy(policy))
    loader = DPOLoader(pairs, batch_size=16, max_seq_len=64, seed=0)
    b = next(loader)
    with torch.no_grad():
        ref_w, ref_l = dpo.reference(b)
        alone = sequence_logps(dpo.ref(b["chosen_input_ids"][:1]).logits, b["chosen_labels"][:1])[0]
    i = int(b["index"][0])
    assert dpo.cache[i, 0].item() == pytest.approx(alone.item(), abs=1e-4) == pytest.approx(ref_w[0].item(), abs=1e-4)
    restored = DirectPreferenceOptimization(copy.deepcopy(policy))
    restored.load_state_dict(dpo.state_dict())
    with torch.no_grad():
        assert torch.equal(restored.reference(b)[1], ref_l) and restored.ref_forwards == 0  # from the cache
    poisoned = {**b, "index": b["index"].clone()}
    dpo.cache[poisoned["index"]] = 0.0  # were eval batches to read the cache, these zeros would show
    with torch.no_grad():
        eval_loss, _ = dpo.eval_loss(policy, poisoned)
        train_loss, _ = dpo.loss(policy, poisoned)
    assert eval_loss.item() == pytest.approx(math.log(2), abs=1e-5)  # pi = pi_ref: margins 0
    assert abs(train_loss.item() - math.log(2)) > 1e-3


def test_sft_weight_adds_chosen_nll(pairs, tok):
    policy = tiny(tok)
    b = next(DPOLoader(pairs, batch_size=4, max_seq_len=64, seed=0))
    plain = DirectPreferenceOptimization(copy.deepcopy(policy), ref_mode="step")
    mixed = DirectPreferenceOptimization(copy.deepcopy(policy), sft_weight=0.5, ref_mode="step")
    with torch.no_grad():
        l0, _ = plain.loss(policy, b)
        l1, m1 = mixed.loss(policy, b)
        nll = torch.nn.functional.cross_entropy(policy(b["chosen_input_ids"]).logits.flatten(0, 1),
                                                b["chosen_labels"].flatten(), ignore_index=-100)
    assert m1["sft_loss"].item() == pytest.approx(nll.item(), rel=1e-5)
    assert l1.item() == pytest.approx(l0.item() + 0.5 * nll.item(), rel=1e-5)


def test_preference_accuracy_reads_one_epoch(pairs, tok):
    loader = DPOLoader(pairs, batch_size=16, max_seq_len=64, seed=0)
    res = preference_accuracy(tiny(tok), loader)
    assert res["pairs"] == len(pairs)
    assert 0.0 <= res["accuracy"] <= 1.0 and res["logp_chosen"] < 0
    assert loader.state_dict()["cursor"] == 0  # the loader is left where it was


def test_cli_dpo(pairs, tok, tmp_path, capsys):
    from minimind.checkpoint import save_checkpoint
    from minimind.cli import main

    save_checkpoint(tmp_path / "sft", tiny(tok), tok)
    data = str(pairs.path.parent / "pairs.jsonl")
    argv = ["dpo", "--init", str(tmp_path / "sft"), "--data", data, "--eval-data", data, "--out",
            str(tmp_path / "run"), "--steps", "4", "--batch-size", "8", "--max-seq-len", "64", "--lr", "3e-3",
            "--dtype", "fp32", "--no-progress", "--log-every", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "held-out preference accuracy before" in out and "->" in out
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rows[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-4)  # step 1 starts at pi = pi_ref
    assert any("eval_loss" in r for r in rows)
    assert main(argv + ["--resume"]) == 0  # a finished run resumes to nothing (once a KeyError)
    assert "done: loss" in capsys.readouterr().out
    assert main(argv[:-2] + ["--beta", "0"]) == 2
