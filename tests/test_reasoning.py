"""Reasoning distillation and the adaptive-thinking switch: prompts, masks and the tag weights."""

import json

import pytest
import torch
import torch.nn.functional as F

from minimind.tokenizer import render_chat
from minimind.train.sft import SupervisedFineTuning

USER = [{"role": "user", "content": "How much is 171 + 91?"}]


def test_think_on_opens_a_think_block(tok):
    ids, mask = render_chat(tok, USER, add_generation_prompt=True, open_thinking=True)
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n")
    assert ids.count(tok.think_id) == 1 and tok.end_think_id not in ids  # left open for the model
    assert ids[-2] == tok.think_id  # <think> then the newline: the model writes its reasoning next
    assert sum(mask) == 0  # nothing of a prompt is trained


def test_think_off_puts_an_empty_think_block_in_the_prompt(tok):
    ids, _ = render_chat(tok, USER, add_generation_prompt=True, open_thinking=False)
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ids.count(tok.think_id) == 1 and ids.count(tok.end_think_id) == 1
    between = ids[ids.index(tok.think_id) + 1: ids.index(tok.end_think_id)]
    assert tok.decode(between).strip() == ""  # closed and empty: the model answers directly
    on, _ = render_chat(tok, USER, add_generation_prompt=True, open_thinking=True)
    assert ids[:len(on)] == on  # "off" is "on" with the block already closed


def test_reasoning_data_trains_the_tags_and_the_thinking(corpus, tok):
    record = json.loads((corpus / "reason.jsonl").read_text(encoding="utf-8").splitlines()[0])
    ids, mask = render_chat(tok, record["conversations"])
    turns = sum(m["role"] == "assistant" for m in record["conversations"])
    think_pos = [i for i, t in enumerate(ids) if t == tok.think_id]
    end_pos = [i for i, t in enumerate(ids) if t == tok.end_think_id]
    assert len(think_pos) == len(end_pos) == turns
    assert all(mask[i] == 1 for i in think_pos + end_pos)  # the model learns to open and close thinking
    first = next(m for m in record["conversations"] if m["role"] == "assistant")
    inside = tok.decode(ids[think_pos[0] + 1: end_pos[0]]).strip()
    assert inside == first["reasoning_content"].strip()
    assert all(mask[think_pos[0]: end_pos[0] + 1])  # the reasoning itself is trained


def test_reasoning_weight_on_think_tags(tok):
    g = torch.Generator().manual_seed(0)
    V = tok.vocab_size
    logits = torch.randn(1, 6, V, generator=g)
    labels = torch.tensor([[-100, tok.think_id, 50, 51, tok.end_think_id, 52]])
    nll = F.cross_entropy(logits[0, 1:], labels[0, 1:], reduction="none")  # positions 1..5
    w = torch.tensor([10.0, 1.0, 1.0, 10.0, 1.0])  # tags weigh think_weight = 10
    want = (w * nll).sum() / w.sum()

    class Fixed(torch.nn.Module):  # a "model" returning these logits
        def forward(self, ids):
            return type("Out", (), {"logits": logits, "aux_loss": None})()

    batch = {"input_ids": torch.zeros(1, 6, dtype=torch.long), "labels": labels, "n_tokens": torch.tensor(5)}
    weighted, _ = SupervisedFineTuning([tok.think_id, tok.end_think_id], 10.0).loss(Fixed(), batch)
    plain, _ = SupervisedFineTuning().loss(Fixed(), batch)
    assert weighted.item() == pytest.approx(want.item(), rel=1e-5)
    assert plain.item() == pytest.approx(nll.mean().item(), rel=1e-5)
    assert weighted.item() != pytest.approx(plain.item(), rel=1e-3)


def test_think_off_never_samples_the_think_tags(tok):
    """Adaptive thinking, off: the prompt closed an empty think block and the tags cannot be sampled,
    even by a model that would most like to open a new one."""
    from minimind.infer.generate import SamplingParams, sample_next, think_suppression
    from minimind.infer.server import parse_chat_request

    off, on = think_suppression(tok, False), think_suppression(tok, True)
    assert set(off) == {tok.think_id, tok.end_think_id} and on == ()
    logits = torch.zeros(4, tok.vocab_size)
    logits[:, tok.think_id] = 50.0  # the tags are by far the most likely next tokens
    logits[:, tok.end_think_id] = 49.0
    assert (sample_next(logits, SamplingParams(temperature=0)) == tok.think_id).all()
    greedy = sample_next(logits, SamplingParams(temperature=0, suppress_ids=off))
    assert not set(greedy.tolist()) & set(off)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        drawn = sample_next(logits, SamplingParams(temperature=1.5, top_p=1.0, suppress_ids=off), generator=g)
        assert not set(drawn.tolist()) & set(off)
    # the server applies it per request: off by default, not when thinking is enabled
    msgs = [{"role": "user", "content": "hi"}]
    assert parse_chat_request({"messages": msgs}, tok, 512).params.suppress_ids == off
    req = parse_chat_request({"messages": msgs, "chat_template_kwargs": {"enable_thinking": True}}, tok, 512)
    assert req.params.suppress_ids == ()
