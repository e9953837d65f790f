"""The sherpa-onnx backend's own logic (endpoints, wake word, flush) against a scripted stand-in for
the library: the real models cannot be downloaded here. The calls it makes are checked against the
installed library's signatures in test_voice.py; this checks what the backend does with the answers.

The stand-in "recognises" audio whose every 0.1 s chunk holds one constant sample value: 0 is silence,
k > 0 is the k-th word of WORDS. An endpoint is 0.5 s of silence after words (sherpa's rule 2)."""

import types

import numpy as np
import pytest

from minimind.voice.audio import RATE
from minimind.voice.listen import Listener

pytest.importorskip("num2words", reason="the voice extra is not installed: pip install 'minimind[voice]'")

WORDS = ["HEY", "MIND", "WHAT", "IS", "TWELVE", "PLUS", "THIRTY", "HELLO"]
CHUNK = RATE // 10


def words_of(samples) -> list[str]:
    return [WORDS[int(round(v * 32768)) - 1] if v > 0 else "" for v in samples[::CHUNK]]


class Stream:
    def __init__(self):
        self.heard, self.silence = [], 0

    def accept_waveform(self, rate, samples):
        assert rate == RATE and samples.dtype == np.float32
        for w in words_of(samples):
            if w and (not self.heard or self.heard[-1] != w or self.silence):
                self.heard.append(w)
            self.silence = 0 if w else self.silence + 1

    def input_finished(self):
        pass


class OnlineRecognizer:
    @classmethod
    def from_transducer(cls, **kw):
        assert kw["enable_endpoint_detection"] and kw["sample_rate"] == RATE
        return cls()

    def create_stream(self):
        return Stream()

    def is_ready(self, s):
        return False

    def get_result(self, s):
        return " ".join(s.heard)

    def is_endpoint(self, s):
        return bool(s.heard) and s.silence >= 5

    def reset(self, s):
        s.heard, s.silence = [], 0


class KeywordSpotter:
    def __init__(self, keywords_file, keywords_threshold, **kw):
        line = open(keywords_file).read().strip()
        assert line == "▁HE Y ▁MI ND @hey_mind" and keywords_threshold == 0.25
        self.pending = {}

    def create_stream(self):
        return Stream()

    def is_ready(self, s):
        found = "HEY MIND" in " ".join(s.heard) and id(s) not in self.pending
        self.pending[id(s)] = self.pending.get(id(s)) or found
        return found

    def decode_stream(self, s):
        pass

    def get_result(self, s):
        return "hey_mind" if self.pending.get(id(s)) else ""

    def reset_stream(self, s):
        s.heard = []


def fake_sherpa():
    return types.SimpleNamespace(OnlineRecognizer=OnlineRecognizer, KeywordSpotter=KeywordSpotter,
                                 text2token=lambda texts, **kw: [["▁HE", "Y", "▁MI", "ND"]] if texts == ["HEY MIND"]
                                 else pytest.fail(f"spelled {texts}"))


def model_dir(path, *extra):
    path.mkdir()
    for name in ("tokens.txt", "encoder-epoch-99.onnx", "encoder-epoch-99.int8.onnx", "decoder-epoch-99.onnx",
                 "joiner-epoch-99.onnx", *extra):
        (path / name).write_text("")
    return path


def audio(*spec) -> np.ndarray:
    """audio("HEY", "MIND", 0, 0, "WHAT") -> one 0.1 s chunk per item (0 = silence)."""
    vals = [0 if w == 0 else WORDS.index(w) + 1 for w in spec]
    return np.repeat(np.array(vals, dtype=np.int16), CHUNK)


@pytest.fixture
def backend(tmp_path, monkeypatch):
    from minimind.voice import sherpa

    monkeypatch.setattr(sherpa, "import_sherpa", fake_sherpa)
    calls = {}
    real = sherpa.transducer_files

    def spy(path, flag):
        calls[flag] = real(path, flag)
        return calls[flag]

    monkeypatch.setattr(sherpa, "transducer_files", spy)
    b = sherpa.SherpaBackend("hey mind", kws_model=model_dir(tmp_path / "kws", "bpe.model"),
                             asr_model=model_dir(tmp_path / "asr"))
    b.calls = calls
    return b


def feed(b, x):
    out = []
    for i in range(0, len(x), CHUNK):
        out += b.accept(x[i:i + CHUNK])
    return out


def test_wake_then_question_in_one_breath(backend):
    assert backend.calls["--asr-model"]["encoder"].endswith("encoder-epoch-99.int8.onnx")  # int8 preferred
    heard = feed(backend, audio(0, "HEY", "MIND", "WHAT", "IS", "TWELVE", "PLUS", "THIRTY", *[0] * 6))
    assert [(h.wake, h.words) for h in heard] == [(True, "what is twelve plus thirty")]
    assert heard[0].start == pytest.approx(0.1) and heard[0].end == pytest.approx(1.3)
    assert "keyword spotter" in backend.summary and "streaming zipformer" in backend.summary


def test_plain_utterance_does_not_wake_and_wake_does_not_leak(backend):
    x = audio("HEY", "MIND", *[0] * 6, "WHAT", "IS", "THIRTY", *[0] * 6, "HELLO", *[0] * 6)
    heard = feed(backend, x)
    assert [(h.wake, h.words) for h in heard] == [(True, ""), (False, "WHAT IS THIRTY"), (False, "HELLO")]
    lis = Listener(timeout=8.0)
    assert [lis.hear(h)[0] for h in heard] == ["wake", "question", "ignored"]


def test_flush_closes_the_utterance_and_restarts_the_clock(backend):
    assert feed(backend, audio("HELLO", "WHAT")) == []
    assert [(h.wake, h.words) for h in backend.flush()] == [(False, "HELLO WHAT")]
    heard = feed(backend, audio("HELLO", *[0] * 6))
    assert heard[0].start == pytest.approx(0.0)
    assert backend.flush() == []


def test_threshold_must_be_a_probability(tmp_path, monkeypatch):
    from minimind.errors import UserError
    from minimind.voice import sherpa

    monkeypatch.setattr(sherpa, "import_sherpa", fake_sherpa)
    with pytest.raises(UserError, match="probability in"):
        sherpa.SherpaBackend("hey mind", threshold=-40, asr_model=model_dir(tmp_path / "asr"))


def test_a_hand_made_keywords_file(tmp_path, monkeypatch):
    from minimind.errors import UserError
    from minimind.voice import sherpa

    monkeypatch.setattr(sherpa, "import_sherpa", fake_sherpa)
    kws, asr = model_dir(tmp_path / "kws"), model_dir(tmp_path / "asr")  # no bpe.model: nothing to spell with
    (tmp_path / "keywords.txt").write_text("▁HE Y ▁MI ND @hey_mind\n")
    b = sherpa.SherpaBackend("hey mind", kws_model=kws, asr_model=asr, kws_keywords=tmp_path / "keywords.txt")
    assert [h.wake for h in feed(b, audio("HEY", "MIND", "HELLO", *[0] * 6))] == [True]
    with pytest.raises(UserError, match="--kws-keywords .*no such file"):
        sherpa.SherpaBackend("hey mind", kws_model=kws, asr_model=asr, kws_keywords=tmp_path / "nope.txt")
    with pytest.raises(UserError, match="no bpe.model"):
        sherpa.SherpaBackend("hey mind", kws_model=kws, asr_model=asr)


def test_a_model_the_library_rejects_is_one_line(tmp_path, monkeypatch):
    from minimind.errors import UserError
    from minimind.voice import sherpa

    def broken(**kw):
        raise RuntimeError("Load model from encoder.onnx failed: Protobuf parsing failed")

    so = fake_sherpa()
    so.OnlineRecognizer = types.SimpleNamespace(from_transducer=broken)
    monkeypatch.setattr(sherpa, "import_sherpa", lambda: so)
    with pytest.raises(UserError, match="--asr-model: sherpa-onnx could not load the model .*Protobuf"):
        sherpa.SherpaBackend(None, asr_model=model_dir(tmp_path / "asr"))
    with pytest.raises(UserError, match="--kws-keywords needs --kws-model"):
        sherpa.SherpaBackend(None, asr_model=tmp_path / "asr", kws_keywords=tmp_path / "k.txt")
