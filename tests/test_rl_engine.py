"""RL rollouts on the generation engine: per-row seeds, and the engine's log-probs equal the ones the
RL objectives compute from a training-shaped (right-padded, batched) forward pass."""

import torch

from minimind.config import ModelConfig
from minimind.infer.engine import Engine, SamplingParams
from minimind.model import MiniMindForCausalLM
from minimind.train.rl.losses import token_logps
from minimind.train.rl.train import engine_sampler


def policy(tok):
    torch.manual_seed(3)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512)
    return MiniMindForCausalLM(cfg).eval()


def prompts(tok):
    return [tok.encode(t) for t in ("The capital of France", "1 + 2 =", "法国的首都是", "Once upon a time")]


def test_sampled_logprobs_equal_a_training_shaped_forward_pass(tok):
    """Temperature 1, full vocabulary: each sampled token's log-prob from the engine equals
    token_logps (what the objectives use) over a right-padded batch of prompt + response rows."""
    model = policy(tok)
    ps = prompts(tok)
    params = [SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=40, seed=100 + i, logprobs=True)
              for i in range(len(ps))]
    results = Engine(model, tok, kv_memory_mb=8).generate(ps, params)
    rows = [p + r.tokens for p, r in zip(ps, results)]
    T = max(len(x) for x in rows)
    ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)  # (N, T) right-padded, as RolloutSource.tensors
    for i, x in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
    with torch.no_grad():
        logp = token_logps(model(ids[:, :-1]).logits, ids[:, 1:])  # (N, T-1): log p(x_{t+1} | x_<=t)
    for i, (p, r) in enumerate(zip(ps, results)):
        assert len(r.tokens) > 0
        want = logp[i, len(p) - 1:len(p) - 1 + len(r.tokens)]
        assert (torch.tensor(r.logprobs) - want).abs().max().item() <= 1e-4  # the sampling distribution
        assert (torch.tensor(r.model_logprobs) - want).abs().max().item() <= 1e-4  # = the plain model at t=1


def test_rollouts_use_per_row_seeds(tok):
    """A row's sample depends on its own seed only: not on its neighbours or its place in the batch."""
    generate = engine_sampler(policy(tok), tok)
    ps = prompts(tok)
    batch = generate(ps, 1.0, 24, [7, 8, 9, 10], ())
    alone = [generate([p], 1.0, 24, [s], ())[0] for p, s in zip(ps, [7, 8, 9, 10])]
    assert batch == alone
    reordered = generate(ps[::-1], 1.0, 24, [10, 9, 8, 7], ())
    assert reordered[::-1] == batch
    same_prompt = generate([ps[0]] * 4, 1.0, 24, [1, 2, 3, 1], ())
    assert same_prompt[0] == same_prompt[3]  # same seed, same sample
    assert len({tuple(t) for t, _ in same_prompt[:3]}) == 3  # different seeds, different samples
    assert all(f in ("stop", "length") for _, f in batch)
