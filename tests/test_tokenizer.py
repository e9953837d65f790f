"""Tokenizer training, fixed special ids, round trips, files, and Hugging Face compatibility."""

import json

import pytest

from minimind.errors import UserError
from minimind.tokenizer import SPECIAL_TOKENS, Tokenizer, train_tokenizer

VOCAB = 500

SAMPLES = [
    "The quick brown fox jumps over the lazy dog.",
    "北京是中国的首都，上海是最大的城市。",
    "Emoji 🎉🚀 and mixed 中文 text, tabs\tand\nnewlines.",
    "  leading spaces, trailing spaces  ",
    "Rare symbols: Ω ∑ ∫ — “quotes” ¿ 😀😀 \u00e9\u0301 zero\u200bwidth",
]


def write_corpus(path, n=300):
    """A small mixed corpus in all three record formats."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({"text": f"The planet number {i} orbits the star. 第{i}颗行星绕着恒星运行。🌍"},
                               ensure_ascii=False) + "\n")
            if i % 3 == 0:
                conv = [{"role": "system", "content": "You are helpful."},
                        {"role": "user", "content": f"What is {i} plus one?"},
                        {"role": "assistant", "content": f"It is {i + 1}.", "reasoning_content": "Add one."}]
                f.write(json.dumps({"conversations": conv}) + "\n")
            if i % 5 == 0:
                f.write(json.dumps({"chosen": [{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "Hello there!"}],
                                    "rejected": [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": "Go away."}]}) + "\n")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    write_corpus(root / "corpus.jsonl")
    train_tokenizer([root / "corpus.jsonl"], root / "tokenizer", vocab_size=VOCAB, progress=False)
    return root / "tokenizer"


@pytest.fixture(scope="module")
def tok(tok_dir):
    return Tokenizer.load(tok_dir)


def test_special_token_ids_are_fixed(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(16))
    assert SPECIAL_TOKENS[:9] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>",
                                  "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
    assert SPECIAL_TOKENS[9:] == [f"<|reserved_{i}|>" for i in range(7)]
    assert (tok.pad_id, tok.eot_id, tok.eos_id, tok.im_start_id, tok.im_end_id) == (0, 0, 2, 1, 2)
    assert (tok.think_id, tok.end_think_id, tok.tool_call_id, tok.end_tool_call_id) == (3, 4, 5, 6)
    # a tiny corpus may offer fewer merges than asked for (token length is capped), never more
    assert 300 < tok.vocab_size == len(tok) <= VOCAB


@pytest.mark.parametrize("token", SPECIAL_TOKENS)
def test_special_and_added_tokens_are_single_ids_inside_text(tok, token):
    token_id = tok.token_to_id(token)
    ids = tok.encode(f"abc{token}xyz 中文{token}{token}\n")
    assert ids.count(token_id) == 3
    # the surrounding text never swallows a piece of the token
    assert tok.decode(ids) == f"abc{token}xyz 中文{token}{token}\n"


def test_skip_special_tokens_keeps_think_and_tool_tags(tok):
    text = "<|im_start|>assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call><|im_end|>"
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == \
        "assistant\n<think>\nhm\n</think>\n\n<tool_call>\n{}\n</tool_call>"


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_training_learned_merges(tok):
    # Frequent corpus words become single tokens; unseen text falls back to bytes.
    assert len(tok.encode(" planet")) == 1
    assert len(tok.encode("行星")) < len("行星".encode("utf-8"))
    assert len(tok.encode("zqxj")) == 4


def test_conversation_and_dpo_records_are_used(tmp_path):
    """A word that only occurs in reasoning_content / DPO messages must be learned."""
    path = tmp_path / "sft.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(200):
            conv = [{"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "reasoning_content": "blorpt"}]
            f.write(json.dumps({"conversations": conv}) + "\n")
            f.write(json.dumps({"chosen": [{"role": "assistant", "content": "snurfle"}],
                                "rejected": [{"role": "assistant", "content": "snurfle"}]}) + "\n")
    tok = train_tokenizer([path], tmp_path / "t", vocab_size=300, progress=False)
    assert len(tok.encode("blorpt")) == 1
    assert len(tok.encode("snurfle")) == 1


def test_encode_batch_matches_encode(tok):
    assert tok.encode_batch(SAMPLES) == [tok.encode(s) for s in SAMPLES]


def test_save_load_keeps_ids_and_fingerprint(tok, tmp_path):
    tok.save(tmp_path / "copy")
    again = Tokenizer.load(tmp_path / "copy")
    assert [again.encode(s) for s in SAMPLES] == [tok.encode(s) for s in SAMPLES]
    assert again.fingerprint() == tok.fingerprint()
    assert Tokenizer.load(tmp_path / "copy" / "tokenizer.json").fingerprint() == tok.fingerprint()
    config = json.loads((tmp_path / "copy" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["eos_token"] == "<|im_end|>" and config["pad_token"] == "<|endoftext|>"
    assert config["added_tokens_decoder"]["3"] == {"content": "<think>", "lstrip": False, "normalized": False,
                                                   "rstrip": False, "single_word": False, "special": False}
    assert config["added_tokens_decoder"]["2"]["special"] is True


def test_fingerprint_changes_with_the_tokenizer(tok, tmp_path):
    write_corpus(tmp_path / "c.jsonl", n=100)
    other = train_tokenizer([tmp_path / "c.jsonl"], tmp_path / "t", vocab_size=300, progress=False)
    assert len(tok.fingerprint()) == 16
    assert other.fingerprint() != tok.fingerprint()


def test_max_docs_stops_reading(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "hello world"}\n{"text": "second"}\nthis line is not JSON\n', encoding="utf-8")
    train_tokenizer([path], tmp_path / "t", vocab_size=300, max_docs=2, progress=False)  # no error
    with pytest.raises(UserError, match=r"c\.jsonl:3: invalid JSON"):
        train_tokenizer([path], tmp_path / "t2", vocab_size=300, progress=False)


def test_autotokenizer_loads_and_encodes_identically(tok, tok_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    texts = SAMPLES + ["<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nyo"]
    for text in texts:
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text)
        assert hf.decode(tok.encode(text)) == text
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 0)
    assert len(hf) == tok.vocab_size


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "ok"\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.jsonl:3: invalid JSON"):
        train_tokenizer([path], tmp_path / "t", vocab_size=300, progress=False)


def test_unknown_record_names_file_and_line(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"text": "ok"}\n{"prompt": "no known field"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"odd\.jsonl:2: .*'text', 'conversations', 'chosen'"):
        train_tokenizer([path], tmp_path / "t", vocab_size=300, progress=False)


def test_missing_files(tmp_path):
    with pytest.raises(UserError, match=r"nope\.jsonl: file not found"):
        train_tokenizer([tmp_path / "nope.jsonl"], tmp_path / "t", vocab_size=300, progress=False)
    with pytest.raises(UserError, match=r"tokenizer\.json: not found"):
        Tokenizer.load(tmp_path / "empty_dir")


def test_corrupt_files(tok, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "tokenizer.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match=r"tokenizer\.json: not a valid tokenizer file"):
        Tokenizer.load(tmp_path / "a")
    tok.save(tmp_path / "b")
    (tmp_path / "b" / "tokenizer_config.json").write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match=r"tokenizer_config\.json: corrupt JSON"):
        Tokenizer.load(tmp_path / "b")


def test_vocab_too_small(tmp_path):
    write_corpus(tmp_path / "c.jsonl", n=5)
    with pytest.raises(UserError, match="vocab_size=100: too small"):
        train_tokenizer([tmp_path / "c.jsonl"], tmp_path / "t", vocab_size=100, progress=False)


def _with_split(tok, regex):
    """The same merges and vocabulary behind another pre-tokenizer split."""
    from tokenizers import Tokenizer as RustTokenizer

    from minimind.tokenizer import pre_tokenizer

    backend = RustTokenizer.from_str(tok.backend.to_str())
    backend.pre_tokenizer = pre_tokenizer(regex)
    return backend


@pytest.fixture(scope="module")
def qwen2_tok_dir(corpus, tmp_path_factory):
    """A tokenizer trained on the test corpus with Qwen2's own split (as tokenizers were before)."""
    import minimind.tokenizer as T

    out = tmp_path_factory.mktemp("qwen2_tok")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "PRETOKENIZE_REGEX", T.QWEN2_REGEX)
        train_tokenizer([corpus / "pretrain.jsonl", corpus / "sft.jsonl"], out, vocab_size=800, progress=False)
    return out


def _han_tokens(tok):
    """Vocabulary entries that hold a whole Han character, decoded."""
    import re

    pieces = (tok.backend.decode([i]) for i in range(tok.vocab_size))
    return [p for p in pieces if re.search("[\u4e00-\u9fff]", p)]


def test_a_chinese_character_is_one_token_wherever_it_stands(tokenizer_dir, qwen2_tok_dir):
    """No token joins a Han character to anything, so 日 is the same token at a message start,
    after "。", after "：" and inside a sentence. Under Qwen2's own split, BPE on the same corpus
    learns punctuation + character and character + character tokens ("。X", "X的"): a subject is
    then a different token after each mark."""
    tok = Tokenizer.load(tokenizer_dir)
    han = _han_tokens(tok)
    assert len(han) > 50 and all(len(p) == 1 for p in han), [p for p in han if len(p) > 1][:10]
    alone = tok.encode("日本的首都")
    for before in ["。", "：", "，", "你好", " ", "\n", "“"]:
        assert tok.encode(before + "日本的首都")[-len(alone):] == alone, before
    # an English word takes its leading space and no punctuation mark
    assert tok.encode("(Paris")[1:] == tok.encode("Paris") and tok.decode(tok.encode("(Paris")[:1]) == "("

    joined = [p for p in _han_tokens(Tokenizer.load(qwen2_tok_dir)) if len(p) > 1]
    assert any(not "\u4e00" <= p[0] <= "\u9fff" for p in joined), joined  # "。X"-style tokens


def test_llama_cpp_qwen2_split_gives_the_same_ids(tokenizer_dir, corpus):
    """GGUF export names llama.cpp's "qwen2" pre-tokenizer. Our split only cuts Qwen2's pieces
    finer and BPE never learned a merge across those cuts, so Qwen2's split with our merges
    tokenizes every corpus text (and hostile ones) to the same ids."""
    from minimind.tokenizer import QWEN2_REGEX

    tok = Tokenizer.load(tokenizer_dir)
    qwen2 = _with_split(tok, QWEN2_REGEX)
    texts = list(SAMPLES) + ["(word) 'quoted' 。铝：铝，铝？铝 铝a铝 1铝 ﹁中文﹂ 日本語のテキスト 한국어",
                             "x\n\n  y\r\n\t。\n中", "ℹ️ Ⅻ ½ ²³ 〇一二 𠀀𠀁 豈 ＡＢＣ１２３"]
    for path in ("pretrain.jsonl", "sft.jsonl"):
        with open(corpus / path, encoding="utf-8") as f:
            texts += [line for _, line in zip(range(400), f)]  # raw JSON lines: text, escapes, tags
    for text in texts:
        assert qwen2.encode(text, add_special_tokens=False).ids == tok.encode(text), text


def test_tokenizers_saved_with_qwen2_split_keep_it(tok_dir, qwen2_tok_dir, tmp_path):
    """A tokenizer trained before the split changed loads with the split it was trained with: its
    punctuation + character tokens ("。X") still come out whole."""
    from minimind.tokenizer import QWEN2_REGEX

    old = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    old["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_REGEX
    (tmp_path / "old").mkdir()
    for f in tok_dir.iterdir():
        (tmp_path / "old" / f.name).write_bytes(f.read_bytes())
    (tmp_path / "old" / "tokenizer.json").write_text(json.dumps(old, ensure_ascii=False), encoding="utf-8")
    loaded = Tokenizer.load(tmp_path / "old")
    qwen2 = _with_split(Tokenizer.load(tok_dir), QWEN2_REGEX)
    for text in SAMPLES:
        assert loaded.encode(text) == qwen2.encode(text, add_special_tokens=False).ids
    before = Tokenizer.load(qwen2_tok_dir)
    joined = [p for p in _han_tokens(before) if len(p) > 1 and not "\u4e00" <= p[0] <= "\u9fff" and "\ufffd" not in p]
    assert joined
    for p in joined:
        assert len(before.encode(p)) == 1, p  # under today's split "。" would be a piece of its own
        assert len(_with_split(before, None).encode(p, add_special_tokens=False).ids) > 1, p
