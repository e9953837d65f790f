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
