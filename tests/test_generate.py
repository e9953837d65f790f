"""The generation engine: batching equals one-by-one, per-row parameters, sampling controls, stops,
streaming, log-probs against a separate forward pass, failure isolation, KV budget, hardening."""

import math
import threading

import pytest
import torch

from minimind.config import ModelConfig
from minimind.errors import UserError
from minimind.infer.engine import Engine, EngineBusy, SamplingParams, TextTracker
from minimind.infer.sampling import sample, sample_next
from minimind.model import KVCache, MiniMindForCausalLM


def tiny(tok, family="dense", seed=0, **kw):
    torch.manual_seed(seed)
    extra = dict(num_experts=4, num_experts_per_tok=2, num_shared_experts=1) if family == "moe" else {}
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, **extra, **kw)
    model = MiniMindForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight[:16] = 0  # never emits a special token: rows run to max_new_tokens
    return model


@pytest.fixture(scope="module")
def engine(tok):
    return Engine(tiny(tok, tie_word_embeddings=False), tok, kv_memory_mb=8)


def prompts(tok):
    texts = ["The capital of France", "1 + 2 =", "法国的首都是", "Once upon a time, a small robot lived by the sea and"]
    return [tok.encode(t) for t in texts]


def naive_greedy(model, prompt, n):
    """The definition, one sequence with the model's plain sequential KV cache (equal to full
    forward passes: tests/test_model.py): argmax, feed it back, n times."""
    cache = KVCache(model.config, 1, len(prompt) + n)
    out, x = [], torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(x, cache=cache).logits[0, -1].argmax()))
            x = torch.tensor([[out[-1]]])
    return out


@pytest.mark.parametrize("family", ["dense", "moe"])
def test_batched_generation_equals_one_by_one_and_the_definition(tok, family):
    model = tiny(tok, family, seed=1, tie_word_embeddings=False)
    eng = Engine(model, tok, kv_memory_mb=8)
    ps = prompts(tok)
    assert len({len(p) for p in ps}) > 1  # really different lengths
    params = SamplingParams(temperature=0, max_new_tokens=64)  # past the first 64-position KV block
    batched = eng.generate(ps, params)
    for p, b in zip(ps, batched):
        assert b.tokens == eng.generate([p], params)[0].tokens
        assert b.finish_reason == "length" and b.prompt_tokens == len(p) and len(b.tokens) == 64
    if family == "dense":  # (MoE: a random router's near-ties make a full forward round differently)
        assert [b.tokens for b in batched] == [naive_greedy(model, p, 64) for p in ps]
    assert eng.stats()["active"] == 0 and eng.stats()["kv_blocks_used"] == 0


def test_rows_keep_their_own_parameters_in_one_batch(engine, tok):
    p = prompts(tok)[0]
    mixed = [SamplingParams(temperature=0, max_new_tokens=20),
             SamplingParams(temperature=1.0, top_k=5, max_new_tokens=9, seed=3),
             SamplingParams(temperature=0.8, top_p=0.9, max_new_tokens=14, seed=4, repetition_penalty=1.3),
             SamplingParams(temperature=0, max_new_tokens=5, stop=["never"])]
    together = engine.generate([p] * 4, mixed)
    alone = [engine.generate([p], [sp])[0] for sp in mixed]
    assert [r.tokens for r in together] == [r.tokens for r in alone]
    assert [len(r.tokens) for r in together] == [20, 9, 14, 5]


def test_seeded_sampling_is_deterministic(engine, tok):
    p = [tok.encode("Once upon a time")]
    s = lambda seed: engine.generate(p, SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=30, seed=seed))[0]
    assert s(7).tokens == s(7).tokens
    assert s(7).tokens != s(8).tokens


def test_max_new_tokens_is_exact_and_stop_string_cuts(engine, tok):
    p = [tok.encode("hello")]
    out = engine.generate(p, SamplingParams(temperature=0, max_new_tokens=13))[0]
    assert out.finish_reason == "length" and len(out.tokens) == 13
    assert engine.generate(p, SamplingParams(max_new_tokens=0))[0].tokens == []
    full = engine.generate(p, SamplingParams(temperature=0, max_new_tokens=40))[0].text
    stop = full[5:8]
    cut = engine.generate(p, SamplingParams(temperature=0, max_new_tokens=40, stop=[stop]))[0]
    assert cut.text == full[:full.find(stop)] and cut.finish_reason == "stop" and len(cut.tokens) < 40


def test_a_stop_token_ends_the_row_and_is_reported(tok):
    model = tiny(tok, tie_word_embeddings=False)
    eng = Engine(model, tok, kv_memory_mb=1)
    p = tok.encode("hi")
    real = model.forward

    def forward(ids, position_ids=None, *args, **kw):  # <|im_end|> wins from the 5th new token on
        out = real(ids, position_ids, *args, **kw)
        if position_ids is not None and (position_ids >= len(p) + 4).all():
            out.logits[..., tok.eos_id] = 1e4
        return out

    model.forward = forward
    try:
        r = eng.generate([p], SamplingParams(temperature=0, max_new_tokens=10))[0]
    finally:
        del model.forward
    assert r.finish_reason == "stop" and len(r.tokens) == 6 and r.tokens[-1] == tok.eos_id
    assert r.text == tok.decode(r.tokens[:-1]) and len(r.logprobs) == 6


def test_stream_joins_to_generate(engine, tok):
    p = tok.encode("The planet")
    for stop in ([], ["a"]):
        params = SamplingParams(temperature=0, max_new_tokens=30, stop=stop)
        assert "".join(engine.stream(p, params)) == engine.generate([p], params)[0].text


def test_logprobs_match_a_separate_forward_pass(tok):
    """The RL-facing promise: each sampled token's log-prob under the distribution it was drawn from
    equals the model's, recomputed by one plain forward pass over prompt + completion."""
    model = tiny(tok, seed=5, tie_word_embeddings=False)
    eng = Engine(model, tok, kv_memory_mb=8)
    ps = prompts(tok)
    for t in (1.0, 0.7):
        params = SamplingParams(temperature=t, max_new_tokens=80, seed=11, logprobs=True, top_logprobs=3)
        for p, r in zip(ps, eng.generate(ps, params)):
            ids = torch.tensor([p + r.tokens])
            with torch.no_grad():
                logits = model(ids).logits[0, len(p) - 1:-1].float()  # (n, V): predicts each sampled token
            picked = torch.tensor(r.tokens)[:, None]
            want = (logits / t).log_softmax(-1).gather(-1, picked)[:, 0]
            plain = logits.log_softmax(-1)
            assert (torch.tensor(r.logprobs) - want).abs().max().item() <= 1e-4
            assert (torch.tensor(r.model_logprobs) - plain.gather(-1, picked)[:, 0]).abs().max().item() <= 1e-4
            top_lp, top_ids = plain.topk(3, dim=-1)
            assert [[i for i, _ in step] for step in r.top_logprobs] == top_ids.tolist()
            assert max(abs(a - b) for s, w in zip(r.top_logprobs, top_lp.tolist()) for (_, a), b in zip(s, w)) <= 1e-4
    # score(): the plain model's log-likelihood of given sequences
    seq = ps[3] + [20, 30, 40]
    with torch.no_grad():
        want = model(torch.tensor([seq])).logits[0, :-1].float().log_softmax(-1)
    got = eng.score([seq])[0]
    assert len(got) == len(seq) - 1
    assert max(abs(g - w) for g, w in zip(got, want.gather(-1, torch.tensor(seq[1:])[:, None])[:, 0].tolist())) <= 1e-5


def test_truncated_sampling_logprobs_follow_the_truncation(engine, tok):
    """With top-k the sampling distribution is renormalised over k tokens: log-probs >= the plain ones."""
    r = engine.generate([tok.encode("hi")], SamplingParams(temperature=1.0, top_k=2, max_new_tokens=30, seed=1,
                                                           logprobs=True, top_logprobs=2))[0]
    assert all(lp >= mlp - 1e-6 for lp, mlp in zip(r.logprobs, r.model_logprobs))
    assert all(t in [i for i, _ in top] for t, top in zip(r.tokens, r.top_logprobs))  # drawn from the top 2
    for lp, top in zip(r.logprobs, r.top_logprobs):  # renormalised over the two: p = e^a / (e^a + e^b)
        a, b = top[0][1], top[1][1]
        assert min(abs(lp - (a - math.log(math.exp(a) + math.exp(b)))),
                   abs(lp - (b - math.log(math.exp(a) + math.exp(b))))) <= 1e-4


def test_top_k_top_p_and_repetition_penalty_math():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, -3.0]])
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_k=2), generator=g).item() for _ in range(200)}
    assert draws == {0, 1}
    p = torch.softmax(logits, -1)[0]  # 0.61, 0.22, 0.14, ...
    draws = {sample_next(logits, SamplingParams(temperature=1.0, top_p=float(p[0] + 0.01)), generator=g).item()
             for _ in range(200)}
    assert draws == {0, 1}  # the smallest set reaching the mass: two tokens
    assert sample_next(logits, SamplingParams(temperature=0)).item() == 0
    seen = torch.tensor([[True, False, False, False, False]])
    # penalty 3: 2.0 -> 0.67 < 1.0, so greedy moves to token 1
    assert sample_next(logits, SamplingParams(temperature=0, repetition_penalty=3.0), seen).item() == 1
    seen_neg = torch.tensor([[False, False, False, True, False]])
    z = torch.tensor([[-1.0, -1.5, -5, -1.2, -9]])
    # a negative logit is multiplied: -1.2 * 3 = -3.6 stays below the others
    assert sample_next(z, SamplingParams(temperature=0, repetition_penalty=3.0), seen_neg).item() == 0


def test_truncation_on_a_large_vocabulary_keeps_exactly_the_sorted_prefix():
    """top-k / top-p read only the head of the sorted order (topk), falling back to a full sort for
    a flat row: the kept set equals the definition, the smallest most-likely prefix reaching p."""
    from minimind.infer.sampling import NUCLEUS_HEAD, _truncate

    g = torch.Generator().manual_seed(0)
    V = 6400
    z = torch.randn(6, V, generator=g) * torch.tensor([[0.01], [0.3], [1.0], [3.0], [8.0], [3.0]])
    rows = [(0, 0.9), (0, 0.5), (40, 1.0), (500, 0.7), (0, 0.95), (0, 1.0)]  # (top_k, top_p) per row
    out = _truncate(z, [SamplingParams(top_k=k, top_p=p).validate() for k, p in rows])
    widest = 0
    for i, (k, p) in enumerate(rows):
        order = z[i].argsort(descending=True)
        probs = z[i].softmax(-1)[order]
        keep = torch.ones(V, dtype=torch.bool)
        if k:
            keep &= torch.arange(V) < k
        if p < 1.0:
            keep &= probs.cumsum(-1) - probs < p
        want = torch.full((V,), float("-inf"))
        want[order[keep]] = z[i, order[keep]]
        assert torch.equal(out[i], want), (i, k, p)
        widest = max(widest, int(keep.sum()) if p < 1.0 and not k else 0)
    assert widest > NUCLEUS_HEAD  # the flat rows took the full-sort path


def test_the_draw_follows_the_distribution():
    """The Gumbel-max draw samples softmax(z): frequencies over 10000 draws within 4 sigma."""
    z = torch.tensor([[1.0, 0.0, -1.0, 0.5]])
    p = z.softmax(-1)[0]
    g = torch.Generator().manual_seed(0)
    n = 10000
    counts = torch.bincount(torch.stack([sample(z, [SamplingParams(temperature=1.0)], [g]).tokens[0]
                                         for _ in range(n)]), minlength=4).float()
    sigma = (p * (1 - p) / n).sqrt()
    assert ((counts / n - p).abs() <= 4 * sigma).all(), (counts / n, p)


def test_tiny_temperatures_are_greedy_and_extreme_parameters_stay_finite():
    logits = torch.tensor([[3.0, 2.9, -1.0], [0.5, 0.1, 0.0]])
    for t in (1e-38, 1e-6, 0.0):
        d = sample(logits, [SamplingParams(temperature=t)] * 2, [None, None])
        assert d.tokens.tolist() == [0, 0] and torch.isfinite(d.logprobs).all()
    seen = torch.ones(2, 3, dtype=torch.bool)
    for pen in (0.01, 100.0):
        params = [SamplingParams(temperature=1e-5, repetition_penalty=pen, top_p=1e-9, top_k=1)] * 2
        d = sample(logits, params, [torch.Generator().manual_seed(0)] * 2, seen)
        assert d.ok.all() and torch.isfinite(d.logprobs).all()


@pytest.mark.parametrize("bad,param", [
    (dict(temperature=-1), "temperature"), (dict(temperature=1e9), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_p=0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"), (dict(max_new_tokens=-1), "max_new_tokens"), (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(repetition_penalty=0), "repetition_penalty"), (dict(repetition_penalty=1e-38), "repetition_penalty"),
    (dict(repetition_penalty=1e38), "repetition_penalty"), (dict(temperature="hot"), "temperature"),
    (dict(stop=[""]), "stop"), (dict(stop=["a"] * 5), "stop"), (dict(stop=["x" * 257]), "stop"),
    (dict(seed="x"), "seed"), (dict(seed=2**80), "seed"), (dict(seed=-(2**70)), "seed"),
    (dict(top_logprobs=21, logprobs=True), "top_logprobs"), (dict(top_logprobs=2), "top_logprobs"),
])
def test_invalid_sampling_params(bad, param):
    with pytest.raises(UserError) as e:
        SamplingParams(**bad).validate()
    assert e.value.param == param


def test_requests_that_can_never_run_are_user_errors(engine, tok):
    with pytest.raises(UserError, match="exceeds the model's context"):
        engine.generate([[5] * 500], SamplingParams(max_new_tokens=100))
    with pytest.raises(UserError, match="token ids"):
        engine.generate([[tok.vocab_size]], SamplingParams())
    with pytest.raises(UserError, match="non-empty"):
        engine.generate([[]], SamplingParams())
    small = Engine(engine.model, tok, kv_memory_mb=0.01)  # a few blocks
    with pytest.raises(UserError, match="do not fit the KV cache"):
        small.generate([[5] * 10], SamplingParams(max_new_tokens=400))


def test_a_failing_row_ends_alone(tok):
    """A row whose logits are NaN ends with an error; its neighbours finish exactly as alone."""
    model = tiny(tok, tie_word_embeddings=False)
    eng = Engine(model, tok, kv_memory_mb=8)
    ps = prompts(tok)[:3]
    params = SamplingParams(temperature=0, max_new_tokens=12)
    alone = [eng.generate([p], params)[0].tokens for p in ps]
    real, calls = model.forward, []

    def forward(ids, position_ids=None, *args, **kw):  # NaN logits for row 1 in the 5th decode step
        out = real(ids, position_ids, *args, **kw)
        if position_ids is not None:
            calls.append(1)
            if len(calls) == 5:
                out.logits[1] = torch.nan
        return out

    model.forward = forward
    try:
        got = eng.generate(ps, params)
    finally:
        del model.forward
    assert got[1].finish_reason == "error" and "not finite" in got[1].error
    assert [got[0].tokens, got[2].tokens] == [alone[0], alone[2]]
    assert eng.stats()["failed"] == 1 and eng.stats()["kv_blocks_used"] == 0


def test_requests_with_one_prompt_share_its_prefill(tok):
    """An RL group (G samples of one prompt) prefills the prompt once; a row admitted while another
    row with its prompt runs copies that row's keys and values: every row's tokens and log-probs
    equal, bit for bit, those it gets from a prefill of its own. max_batch 4 splits the group."""
    model = tiny(tok, tie_word_embeddings=False)
    p, q = prompts(tok)[3] * 6, prompts(tok)[0]  # p: > 64 positions, the copy crosses a KV block
    assert len(p) > 64
    reqs = [p] * 6 + [q] + [p] * 2
    params = [SamplingParams(temperature=1.0, max_new_tokens=20, seed=s, logprobs=True) for s in range(len(reqs))]
    shared = Engine(model, tok, kv_memory_mb=8, max_batch=4)
    got = shared.generate(reqs, params)
    own = Engine(model, tok, kv_memory_mb=8, max_batch=4)
    own._prefill = lambda req, donor=None: Engine._prefill(own, req)  # each row its own prefill
    want = own.generate(reqs, params)
    assert [(r.tokens, r.logprobs, r.model_logprobs) for r in got] == \
           [(r.tokens, r.logprobs, r.model_logprobs) for r in want]
    assert len({tuple(r.tokens) for r in got[:6]}) == 6  # seeded rows, not copies of one another
    # admissions p p p p | p p q p | p: a p row runs when the 2nd-4th and 6th p come, none at the 5th and 9th
    assert (shared.stats()["prefills"], shared.stats()["shared_prefills"]) == (4, 5)
    assert (own.stats()["prefills"], own.stats()["shared_prefills"]) == (9, 0)
    assert shared.stats()["kv_blocks_used"] == 0


def test_kv_budget_queues_requests_instead_of_failing(tok):
    """A pool of 3 blocks holds one request of 65..128 positions at a time: four run one after another."""
    model = tiny(tok, tie_word_embeddings=False)
    eng = Engine(model, tok, kv_memory_mb=3 * 64 * eng_bytes_per_token(model) / 2**20)
    assert eng.stats()["kv_blocks"] == 3
    ps = prompts(tok)
    params = SamplingParams(temperature=0, max_new_tokens=70)  # 2 blocks each
    got = eng.generate(ps, params)
    roomy = Engine(model, tok, kv_memory_mb=8)
    assert [r.tokens for r in got] == [r.tokens for r in roomy.generate(ps, params)]
    assert eng.stats()["steps"] >= 4 * (params.max_new_tokens - 1)  # they could not share steps
    assert roomy.stats()["steps"] < 2 * params.max_new_tokens  # with room, they do


def eng_bytes_per_token(model):
    from minimind.infer.kvcache import PagedKVCache

    return PagedKVCache.bytes_per_token(model.config, torch.float32)


def test_bounded_queue_and_background_thread(tok):
    eng = Engine(tiny(tok, tie_word_embeddings=False), tok, kv_memory_mb=8, max_batch=1, max_queue=2)
    params = SamplingParams(temperature=0, max_new_tokens=5)
    p = tok.encode("hi")
    queued = [eng.submit(p, params), eng.submit(p, params)]  # not started: both wait
    with pytest.raises(EngineBusy):
        eng.submit(p, params)
    eng.start()
    try:
        assert all(r.wait(60) for r in queued)
        results = []
        threads = [threading.Thread(target=lambda: results.extend(eng.generate([p], params))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [r.tokens for r in results] == [queued[0].result.tokens] * 3
    finally:
        eng.stop()


def test_cancel_frees_the_row(engine, tok):
    events = []
    req = engine.submit(tok.encode("hi"), SamplingParams(temperature=0, max_new_tokens=200), on_event=events.append)
    engine.step()
    engine.step()
    assert engine.stats()["active"] == 1
    req.cancel()
    engine.step()
    assert req.done.is_set() and req.result.finish_reason == "cancelled"
    assert engine.stats()["active"] == 0 and engine.stats()["kv_blocks_used"] == 0
    assert events[-1][0] == "done"


def test_text_tracker_never_splits_characters_or_leaks_stop_strings(tok):
    text = "你好，世界! 🙂 tools: <think> done"
    ids = tok.encode(text)
    assert len(ids) > len(text) / 3  # some characters take several byte-level tokens
    tracker = TextTracker(tok, [])
    deltas = [tracker.add(t)[0] for t in ids] + [tracker.rest()]
    assert "".join(deltas) == tok.decode(ids) == text and not any("\ufffd" in d for d in deltas)
    tracker = TextTracker(tok, ["世界", "never"])
    out, stopped = [], False
    for t in ids:
        delta, stopped = tracker.add(t)
        out.append(delta)
        if stopped:
            break
    assert stopped and "".join(out) == "你好，" and tracker.text == "你好，"
