"""Shared fixtures: a small built-in corpus and a tokenizer trained on it, made once per session."""

import pytest


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    from minimind.data.synth import synth_corpus

    out = tmp_path_factory.mktemp("corpus")
    synth_corpus(out, seed=0, size=0.05, progress=False)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(corpus, tmp_path_factory):
    from minimind.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer([corpus / "pretrain.jsonl", corpus / "sft.jsonl"], out, vocab_size=800, progress=False)
    return out


@pytest.fixture(scope="session")
def tok(tokenizer_dir):
    from minimind.tokenizer import Tokenizer

    return Tokenizer.load(tokenizer_dir)


@pytest.fixture(scope="session")
def pretrain_data(corpus, tok, tmp_path_factory):
    """The corpus's pretraining text, prepared (tokenized) once."""
    from minimind.data.prepare import load_prepared, prepare

    out = tmp_path_factory.mktemp("prepared") / "pretrain"
    prepare(corpus / "pretrain.jsonl", tok, out, kind="pretrain", progress=False, verbose=False)
    return load_prepared(out)


def tiny_model(tok, seed=0, **kw):
    """A 2-layer, 64-wide model on the test tokenizer: trains in milliseconds per step."""
    import torch

    from minimind.config import ModelConfig
    from minimind.model import MiniMindForCausalLM

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256, bos_token_id=tok.im_start_id,
                      eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **kw)
    return MiniMindForCausalLM(cfg)
