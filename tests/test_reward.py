"""Rewards: rules on hand-made replies, the Bradley-Terry reward model, its transformers export."""

import json
import math

import pytest
import torch

from minimind.config import ModelConfig
from minimind.reward import RewardMix
from minimind.reward.model import BradleyTerry, NativeReward, RewardModel, load_reward_model, with_suffix
from minimind.reward.rules import RuleReward, answer_reward, format_reward, length_reward
from minimind.tokenizer import render_chat


def rec(q, gt):
    return {"conversations": [{"role": "user", "content": q}], "gt": gt}


@pytest.mark.parametrize("reply,ok", [
    ("12 + 30 = 42.", 1.0),
    ("The answer is 42.", 1.0),
    ("42", 1.0),
    ("40, 41, 42", 0.0),  # spraying candidates earns nothing
    ("42 or maybe 43", 0.0),  # the last number is the answer
    ("12 + 30 = 43.", 0.0),
    ("", 0.0),
])
def test_numeric_answers_must_be_stated(reply, ok):
    assert answer_reward(rec("What is 12 + 30?", "42"), {"content": reply}) == ok


def test_chinese_and_text_answers():
    assert answer_reward(rec("12加30等于多少？", "42"), {"content": "12加30等于42。"}) == 1.0
    assert answer_reward(rec("What is the capital of France?", "Paris"),
                         {"content": "The capital of France is Paris."}) == 1.0
    assert answer_reward(rec("What is the capital of France?", "Paris"), {"content": "Parisian food."}) == 0.0
    listing = ", ".join(["Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Prague", "Warsaw", "Athens"] * 3)
    assert answer_reward(rec("What is the capital of France?", "Paris"), {"content": listing + ", Paris"}) == 0.0
    assert answer_reward(rec("法国的首都是哪里？", "巴黎"), {"content": "法国的首都是巴黎。"}) == 1.0


def test_format_and_length_rules_and_the_weighted_mix():
    assert format_reward({}, {"content": "x", "reasoning_content": "because"}, think=True) == 1.0
    assert format_reward({}, {"content": "x", "reasoning_content": ""}, think=True) == 0.0
    assert format_reward({}, {"content": "x", "reasoning_content": None}, think=False) == 1.0
    assert format_reward({}, {"content": "x", "tool_calls": [{"name": "calculator"}]}) == 0.0
    assert length_reward({}, {"finish_reason": "length"}) == 0.0
    rules = RuleReward({"answer": 3.0, "length": 1.0})
    r = rec("What is 1 + 1?", "2")
    totals, parts = rules.score([r, r], [{"content": "2", "finish_reason": "stop"},
                                         {"content": "2", "finish_reason": "length"}])
    assert totals == pytest.approx([1.0, 0.75]) and parts["length"] == [1.0, 0.0]
    mix = RewardMix([(rules, 1.0), (rules, 3.0)])
    assert mix.score([r], [{"content": "3", "finish_reason": "stop"}])[0] == pytest.approx([0.25])


def tiny_rm(tok, seed=0):
    torch.manual_seed(seed)
    return RewardModel(ModelConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.im_start_id,
        eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, num_labels=1))


def test_training_rows_are_completed_to_the_template_rendering(tok):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    full, _ = render_chat(tok, conv)
    row = torch.tensor([full[:-1] + [tok.pad_id] * 3])  # what DPOLoader holds: no last token, padded
    ids, index = with_suffix(row, tok.pad_id, tok.encode("\n"))
    assert ids[0, :len(full)].tolist() == full and index.item() == len(full) - 1


def test_bradley_terry_loss_is_the_formula(tok):
    rm = tiny_rm(tok)
    w, l_ = [render_chat(tok, [{"role": "user", "content": "Q"}, {"role": "assistant", "content": a}])[0]
             for a in ("yes", "no no")]
    width = max(len(w), len(l_)) - 1
    pad = lambda x: x[:-1] + [tok.pad_id] * (width - len(x) + 1)  # noqa: E731
    batch = {"chosen_input_ids": torch.tensor([pad(w)]), "rejected_input_ids": torch.tensor([pad(l_)]),
             "n_tokens": torch.tensor(5)}
    loss, m = BradleyTerry(tok.pad_id, tok.encode("\n")).loss(rm, batch)
    r_w = rm(torch.tensor([w]), torch.tensor([len(w) - 1]))
    r_l = rm(torch.tensor([l_]), torch.tensor([len(l_) - 1]))
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-(r_w - r_l).item()))), rel=1e-5)
    assert m["pair_acc"].item() == float(r_w.item() > r_l.item())


def test_lm_regulariser_adds_the_chosen_replies_language_modelling_loss(tok):
    """--lm-coef: L = BT + c * CE of the chosen reply, equal to the causal LM's own loss on it."""
    import torch.nn.functional as F

    from minimind.model import MiniMindForCausalLM

    rm = tiny_rm(tok, seed=1)
    conv = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "yes it is"}]
    w, mask = render_chat(tok, conv)
    l_ = render_chat(tok, [conv[0], {"role": "assistant", "content": "no"}])[0]
    width = max(len(w), len(l_)) - 1
    pad = lambda x: x[:-1] + [tok.pad_id] * (width - len(x) + 1)  # noqa: E731
    labels = [t if m else -100 for t, m in zip(w[1:], mask[1:])] + [-100] * (width - len(w) + 1)
    batch = {"chosen_input_ids": torch.tensor([pad(w)]), "rejected_input_ids": torch.tensor([pad(l_)]),
             "chosen_labels": torch.tensor([labels]), "n_tokens": torch.tensor(5)}
    bt, _ = BradleyTerry(tok.pad_id, tok.encode("\n")).loss(rm, batch)
    total, m = BradleyTerry(tok.pad_id, tok.encode("\n"), lm_coef=0.5).loss(rm, batch)
    cfg = rm.config
    cfg.num_labels = 0
    lm = MiniMindForCausalLM(cfg)
    lm.model.load_state_dict(rm.model.state_dict())  # the same trunk, its tied LM head
    logits = lm(torch.tensor([w[:-1]])).logits  # (1, T, V)
    want = F.cross_entropy(logits[0].float(), torch.tensor([t if m else -100 for t, m in zip(w[1:], mask[1:])]))
    assert m["lm_loss"].item() == pytest.approx(want.item(), rel=1e-5) and m["lm_loss"].item() > 0.1
    assert m["bt_loss"].item() == pytest.approx(bt.item(), rel=1e-6)
    assert total.item() == pytest.approx(bt.item() + 0.5 * want.item(), rel=1e-5)
    total.backward()
    assert rm.model.embed_tokens.weight.grad is not None and rm.score.weight.grad is not None


def test_exported_reward_model_scores_the_same_in_transformers(tok, tmp_path):
    pytest.importorskip("transformers")
    from minimind.checkpoint import save_checkpoint
    from minimind.export.hf import export_hf
    from minimind.reward.external import ExternalReward

    rm = tiny_rm(tok, seed=3)
    save_checkpoint(tmp_path / "rm", rm, tok)
    model, _, meta = load_reward_model(tmp_path / "rm")
    assert meta == {"score_center": 0.0, "kind": "head"} and model.config.num_labels == 1
    export_hf(tmp_path / "rm", tmp_path / "hf")
    records = [rec("What is 2 + 3?", "5"), rec("法国的首都是哪里？", "巴黎")]
    replies = [{"content": "2 + 3 = 5."}, {"content": "法国的首都是巴黎。"}]
    native = NativeReward(tmp_path / "rm").score(records, replies)
    external = ExternalReward(tmp_path / "hf").score(records, replies)
    assert native[1]["rm_score"] == pytest.approx(external[1]["ext_score"], abs=1e-4)
    assert native[0] == pytest.approx(external[0], abs=1e-5)


def test_a_causal_lm_is_not_a_reward_model(tok, tmp_path):
    from minimind.checkpoint import save_checkpoint
    from minimind.errors import UserError
    from minimind.model import MiniMindForCausalLM

    cfg = tiny_rm(tok).config
    cfg.num_labels = 0
    save_checkpoint(tmp_path / "lm", MiniMindForCausalLM(cfg), tok)
    with pytest.raises(UserError, match="not a reward model"):
        load_reward_model(tmp_path / "lm")


def test_cli_reward_train_writes_a_reward_model(corpus, tok, tmp_path, capsys):
    from minimind.checkpoint import save_checkpoint
    from minimind.cli import main
    from minimind.model import MiniMindForCausalLM

    cfg = tiny_rm(tok).config
    cfg.num_labels = 0
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "sft", MiniMindForCausalLM(cfg), tok)
    lines = (corpus / "dpo.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:48]) + "\n", encoding="utf-8")
    (tmp_path / "held.jsonl").write_text("\n".join(lines[48:64]) + "\n", encoding="utf-8")
    rc = main(["reward", "train", "--init", str(tmp_path / "sft"), "--data", str(tmp_path / "train.jsonl"),
               "--eval-data", str(tmp_path / "held.jsonl"), "--out", str(tmp_path / "rm"), "--steps", "3",
               "--batch-size", "8", "--max-seq-len", "128", "--dtype", "fp32", "--device", "cpu", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "held-out pair accuracy" in out and "(16 pairs;" in out
    # the bar printed before training: the --init model's own likelihood on the held-out pairs
    from minimind.checkpoint import load_checkpoint

    lm, _ = load_checkpoint(tmp_path / "sft", device=torch.device("cpu"), dtype=torch.float32)
    wins = 0
    for line in lines[48:64]:
        pair = json.loads(line)
        logp = []
        for conv in (pair["chosen"], pair["rejected"]):
            ids, mask = render_chat(tok, conv)
            with torch.no_grad():
                lp = lm(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
            logp.append(sum(lp[i - 1, ids[i]].item() for i in range(1, len(ids)) if mask[i]))
        wins += logp[0] > logp[1]
    assert f"own likelihood ranks right (sum of the reply's token log-probs): {wins / 16:.1%} (16 pairs)" in out
    assert f"the --init model's own likelihood: {wins / 16:.1%})" in out
    model, _, meta = load_reward_model(tmp_path / "rm")
    assert model.config.num_labels == 1 and meta["kind"] == "head" and meta["score_center"] != 0.0


# ----------------------------------------------------------------------------- the likelihood reward model

def tiny_lm(tok, seed=0):
    from minimind.model import MiniMindForCausalLM

    cfg = tiny_rm(tok).config
    cfg.num_labels = 0
    torch.manual_seed(seed)
    return MiniMindForCausalLM(cfg)


def reply_mean_logp(lm, tok, conv) -> float:
    """Mean log-prob of the last message's trained tokens, by hand from the full rendering."""
    ids, mask = render_chat(tok, conv)
    start = len(render_chat(tok, conv[:-1])[0])  # the last message starts after the earlier turns
    with torch.no_grad():
        lp = lm(torch.tensor([ids])).logits[0].float().log_softmax(-1)  # (T, V)
    terms = [lp[i - 1, ids[i]].item() for i in range(start, len(ids)) if mask[i]]
    assert len(terms) >= 2
    return sum(terms) / len(terms)


def dpo_batch(tok, pairs):
    """A DPOLoader-shaped batch of (chosen, rejected) conversations: inputs without the last token."""
    rows = [render_chat(tok, c) for pair in pairs for c in pair]
    width = max(len(ids) for ids, _ in rows) - 1
    ids = torch.full((len(rows), width), tok.pad_id)
    labels = torch.full((len(rows), width), -100)
    for i, (r, m) in enumerate(rows):
        ids[i, :len(r) - 1] = torch.tensor(r[:-1])
        labels[i, :len(r) - 1] = torch.tensor([t if k else -100 for t, k in zip(r[1:], m[1:])])
    return {"chosen_input_ids": ids[0::2], "rejected_input_ids": ids[1::2], "chosen_labels": labels[0::2],
            "rejected_labels": labels[1::2], "n_tokens": torch.tensor(int((labels != -100).sum()))}


def test_likelihood_reward_is_beta_times_the_replys_mean_log_prob(tok):
    from minimind.reward.model import LikelihoodBradleyTerry

    lm = tiny_lm(tok, seed=4)
    q = {"role": "user", "content": "What is 2 + 3?"}
    pairs = [([q, {"role": "assistant", "content": "2 + 3 = 5."}],
              [q, {"role": "assistant", "content": "2 + 3 = 6, I think."}]),
             ([q, {"role": "assistant", "content": "5"}], [q, {"role": "assistant", "content": "It is 5."}])]
    obj = LikelihoodBradleyTerry(beta=2.5)
    loss, m = obj.loss(lm, dpo_batch(tok, pairs))
    r = [[2.5 * reply_mean_logp(lm, tok, c) for c in pair] for pair in pairs]
    want = sum(-math.log(1 / (1 + math.exp(-(w - l_)))) for w, l_ in r) / 2
    assert loss.item() == pytest.approx(want, rel=1e-5)
    assert m["margin"].item() == pytest.approx(sum(w - l_ for w, l_ in r) / 2, rel=1e-5, abs=1e-6)
    assert m["pair_acc"].item() == sum(w > l_ for w, l_ in r) / 2
    loss.backward()
    assert lm.model.embed_tokens.weight.grad.abs().sum() > 0


def test_native_likelihood_reward_scores_the_last_reply_only(tok, tmp_path):
    """A saved likelihood reward model scores sigmoid(beta * mean log p(last reply) - center), and a
    batch of conversations of different lengths scores each as it scores alone."""
    from minimind.checkpoint import save_checkpoint
    from minimind.reward.model import save_reward_meta

    lm = tiny_lm(tok, seed=5)
    save_checkpoint(tmp_path / "rm", lm, tok)
    save_reward_meta(tmp_path / "rm", center=-7.0, kind="likelihood", beta=3.0)
    rm = NativeReward(tmp_path / "rm", batch_size=2)
    model, _, meta = load_reward_model(tmp_path / "rm")
    assert meta == {"score_center": -7.0, "kind": "likelihood", "beta": 3.0} and model.config.num_labels == 0
    records = [{"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"},
                                  {"role": "user", "content": "What is 2 + 3?"}]},
               rec("法国的首都是哪里？", "巴黎"), rec("What is 2 + 3?", "5")]
    replies = [{"content": "2 + 3 = 5."}, {"content": "法国的首都是巴黎。"}, {"content": "5"}]
    rewards, parts = rm.score(records, replies)
    for r, y, got, raw in zip(records, replies, rewards, parts["rm_score"]):
        conv = r["conversations"] + [{"role": "assistant", "content": y["content"]}]
        want = 3.0 * reply_mean_logp(lm, tok, conv)
        assert raw == pytest.approx(want, rel=1e-4)
        assert got == pytest.approx(1 / (1 + math.exp(-(want + 7.0))), rel=1e-4)


def test_likelihood_reward_model_exports_as_a_causal_lm(tok, tmp_path):
    transformers = pytest.importorskip("transformers")
    from minimind.checkpoint import save_checkpoint
    from minimind.export.hf import export_hf
    from minimind.reward.model import save_reward_meta

    save_checkpoint(tmp_path / "rm", tiny_lm(tok, seed=6), tok)
    save_reward_meta(tmp_path / "rm", center=-2.0, kind="likelihood", beta=5.0)
    export_hf(tmp_path / "rm", tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "reward.json").read_text()) == {
        "score_center": -2.0, "kind": "likelihood", "beta": 5.0}
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    conv = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "2 + 3 = 5."}]
    native = NativeReward(tmp_path / "rm").raw_scores([conv])[0]
    assert native == pytest.approx(5.0 * reply_mean_logp(hf, tok, conv), rel=1e-4)
    # --external-reward-model on the export scores what --reward-model scores, centre included
    from minimind.reward.external import ExternalReward

    records = [rec("What is 2 + 3?", "5"), rec("法国的首都是哪里？", "巴黎"),
               {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                  {"role": "user", "content": "Who are you?"}]}]
    replies = [{"content": "2 + 3 = 5."}, {"content": "法国的首都是巴黎。"}, {"content": "I am MiniMind."}]
    ours, theirs = NativeReward(tmp_path / "rm").score(records, replies), ExternalReward(tmp_path / "hf").score(
        records, replies)
    assert theirs[1]["ext_score"] == pytest.approx(ours[1]["rm_score"], rel=1e-4)
    assert theirs[0] == pytest.approx(ours[0], rel=1e-4) and len(set(ours[1]["rm_score"])) == 3
    # a folder whose template writes no ChatML assistant header: one clear error, not a traceback
    from minimind.errors import UserError

    cfg_file = tmp_path / "hf" / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="cannot be found"):
        ExternalReward(tmp_path / "hf").score(records[:1], replies[:1])


def test_bad_reward_json_is_one_clear_error(tok, tmp_path):
    from minimind.checkpoint import save_checkpoint
    from minimind.errors import UserError

    save_checkpoint(tmp_path / "rm", tiny_lm(tok), tok)
    (tmp_path / "rm" / "reward.json").write_text('{"score_center": 0, "kind": "likelihood"}')
    with pytest.raises(UserError, match=r"reward\.json: not a reward-model description"):
        load_reward_model(tmp_path / "rm")
    (tmp_path / "rm" / "reward.json").write_text('[1, 2]')  # valid JSON, not an object
    with pytest.raises(UserError, match=r"reward\.json: not a reward-model description"):
        load_reward_model(tmp_path / "rm")


def test_cli_reward_train_likelihood_head(corpus, tok, tmp_path, capsys):
    """--head likelihood: the printed held-out accuracy is what the saved model's NativeReward ranks."""
    from minimind.checkpoint import save_checkpoint
    from minimind.cli import main

    save_checkpoint(tmp_path / "sft", tiny_lm(tok, seed=7), tok)
    lines = (corpus / "dpo.jsonl").read_text(encoding="utf-8").splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:48]) + "\n", encoding="utf-8")
    (tmp_path / "held.jsonl").write_text("\n".join(lines[48:64]) + "\n", encoding="utf-8")
    args = ["reward", "train", "--init", str(tmp_path / "sft"), "--data", str(tmp_path / "train.jsonl"),
            "--eval-data", str(tmp_path / "held.jsonl"), "--out", str(tmp_path / "rm"), "--steps", "3",
            "--batch-size", "8", "--max-seq-len", "128", "--dtype", "fp32", "--device", "cpu", "--no-progress"]
    assert main(args + ["--head", "likelihood", "--lm-coef", "1"]) == 2
    assert "--lm-coef is for --head scalar" in capsys.readouterr().err
    assert main(args + ["--head", "likelihood", "--beta", "0"]) == 2
    assert "--beta must be > 0" in capsys.readouterr().err
    assert main(args + ["--head", "likelihood", "--beta", "4"]) == 0
    out = capsys.readouterr().out
    rm = NativeReward(tmp_path / "rm")
    assert rm.kind == "likelihood" and rm.beta == 4.0 and rm.model.config.num_labels == 0
    pairs = [json.loads(line) for line in lines[48:64]]
    scores = rm.raw_scores([c for p in pairs for c in (p["chosen"], p["rejected"])])
    wins = sum(w > l_ for w, l_ in zip(scores[0::2], scores[1::2]))
    assert f"held-out pair accuracy {wins / 16:.1%} (16 pairs;" in out
