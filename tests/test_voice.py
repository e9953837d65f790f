"""`minimind voice` without speech: text forms, the wake state machine, audio input checks, the domain
language model, and the model-flag checks of both backends (one line, exit 2)."""

import inspect
import io
import wave

import numpy as np
import pytest

from minimind.cli import main
from minimind.errors import UserError
from minimind.voice.audio import read_wav, stdin_chunks, write_wav
from minimind.voice.backend import Heard
from minimind.voice.listen import Listener

pytest.importorskip("pocketsphinx", reason="the voice extra is not installed: pip install 'minimind[voice]'")

from minimind.voice.text import spoken, strip_wake, wer, written  # noqa: E402  (needs num2words, jiwer)


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minimind: error: ") and "\n" not in err and "Traceback" not in err
    return err


# ----------------------------------------------------------------------------- text

def test_spoken_form_of_corpus_questions():
    assert spoken("What is 3229 plus 38? Use the calculator.") == \
        "what is three thousand two hundred and twenty nine plus thirty eight use the calculator"
    assert spoken("74 + 59 = ?") == "seventy four plus fifty nine equals"
    assert spoken("What is 7 × 8?") == "what is seven times eight"
    assert spoken("What's 10 - 3?") == "what's ten minus three"


def test_written_form_for_the_chat_model():
    assert written("what is twelve plus thirty") == "What is 12 plus 30?"
    assert written("add ninety four and ten") == "Add 94 and 10."
    assert written("tell me a story") == "Tell me a story."
    assert written("what is 12 + 30?") == "What is 12 + 30?"  # already written (SenseVoice ITN)
    assert written("  ") == ""


def test_strip_wake_and_wer():
    assert strip_wake("hey mind what is it", "Hey, mind!") == (True, "what is it")
    assert strip_wake("hey, mind. what is it", "hey mind") == (True, "what is it")
    assert strip_wake("hey what is it", "hey mind") == (False, "hey what is it")
    assert wer(["a b c d"], ["a x c d"]) == pytest.approx(0.25)
    assert wer(["a b", "c d"], ["a b", ""]) == pytest.approx(0.5)  # a silent hypothesis: all deleted


# ----------------------------------------------------------------------------- wake state machine

def test_listener_wake_then_question_then_asleep():
    lis = Listener(need_wake=True, timeout=5.0)
    assert lis.hear(Heard("what is it", False, 0.0, 1.0)) == ("ignored", None)
    assert lis.hear(Heard("what is it", True, 2.0, 3.0)) == ("question", "what is it")  # one breath
    assert lis.hear(Heard("", True, 4.0, 4.5)) == ("wake", None)                      # bare wake word
    assert lis.hear(Heard("", False, 5.0, 5.2)) == ("empty", None)                    # noise: still awake
    assert lis.hear(Heard("and this", False, 6.0, 7.0)) == ("question", "and this")
    assert lis.hear(Heard("and that", False, 8.0, 9.0)) == ("ignored", None)          # asleep again


def test_listener_times_out_and_no_wake_mode_answers_everything():
    lis = Listener(need_wake=True, timeout=5.0)
    assert lis.hear(Heard("", True, 0.0, 1.0)) == ("wake", None)
    assert lis.hear(Heard("too late", False, 6.5, 7.0)) == ("ignored", None)  # 6.5 > 1 + 5
    free = Listener(need_wake=False)
    assert free.hear(Heard("anything", False, 0.0, 1.0)) == ("question", "anything")
    assert free.hear(Heard("", False, 2.0, 3.0)) == ("empty", None)


# ----------------------------------------------------------------------------- audio in

def test_wav_round_trip_and_downmix(tmp_path):
    x = (np.sin(np.arange(1600) / 5) * 1000).astype(np.int16)
    assert np.array_equal(read_wav(write_wav(tmp_path / "a.wav", x)), x)
    with wave.open(str(tmp_path / "st.wav"), "wb") as w:
        w.setnchannels(2), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes(np.stack([x, x // 2], axis=1).astype("<i2").tobytes())
    assert np.array_equal(read_wav(tmp_path / "st.wav"), ((x.astype(int) + x // 2) / 2).astype(np.int16))


def test_stdin_pcm_keeps_split_samples():
    x = np.arange(-500, 500, dtype=np.int16)

    class Trickle(io.BytesIO):  # a pipe that returns odd byte counts
        def read(self, n=-1):
            return super().read(min(n, 301))

    got = np.concatenate(list(stdin_chunks(16000, 160, Trickle(x.astype("<i2").tobytes()))))
    assert np.array_equal(got, x)
    with pytest.raises(UserError, match="8000 Hz"):
        stdin_chunks(8000, 160, io.BytesIO(b""))


@pytest.fixture
def ckpt(tmp_path):
    return str(tmp_path / "no-checkpoint-needed")  # input errors come before the model loads


def test_bad_audio_is_one_line_exit_2(tmp_path, capsys, ckpt):
    write_wav(tmp_path / "8k.wav", np.zeros(800, np.int16), rate=8000)
    err = one_line_error(capsys, ["voice", ckpt, "--input", str(tmp_path / "8k.wav"), "--no-wake-word"])
    assert "8k.wav" in err and "8000 Hz" in err and "16000" in err and "ffmpeg" in err
    (tmp_path / "junk.wav").write_bytes(b"RIFF....not a wave file at all")
    err = one_line_error(capsys, ["voice", ckpt, "--input", str(tmp_path / "junk.wav")])
    assert "junk.wav" in err and "not a readable WAV" in err
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(1), w.setframerate(16000), w.writeframes(b"\x80" * 100)
    assert "8-bit" in one_line_error(capsys, ["voice", ckpt, "--input", str(tmp_path / "8bit.wav")])
    assert "no such file" in one_line_error(capsys, ["voice", ckpt, "--input", str(tmp_path / "nope.wav")])
    assert "--sample-rate" in one_line_error(capsys, ["voice", ckpt, "--input", "-", "--sample-rate", "44100"])
    assert "--push-to-talk" in one_line_error(capsys, ["voice", ckpt, "--input", "-", "--push-to-talk"])
    assert "--vad-window" in one_line_error(capsys, ["voice", ckpt, "--input", "-", "--vad-window", "0.1"])
    assert "--listen-timeout" in one_line_error(capsys, ["voice", ckpt, "--input", "-", "--listen-timeout", "0"])
    assert "--wake-word is empty" in one_line_error(capsys, ["voice", ckpt, "--input", "-", "--wake-word", " "])


# ----------------------------------------------------------------------------- domain language model

def test_domain_sentences_are_english_spoken_training_questions(corpus, tmp_path):
    from minimind.voice.lm import build_arpa, corpus_sentences

    s = corpus_sentences(corpus)
    assert len(s) > 100 and all(x.isascii() and x == spoken(x) for x in s)
    assert any(x.startswith("what is the capital of") for x in s)
    assert not any(ch.isdigit() for x in s for ch in x)
    held = {spoken(q) for q in __import__("minimind.voice.evaluate", fromlist=["x"]).heldout_questions(corpus)}
    train_only = set(corpus_sentences(corpus / "sft.jsonl"))
    assert train_only <= set(s) and not (held - train_only) & set(s)  # eval/ never shapes the model
    arpa = build_arpa(s[:50], tmp_path / "d.arpa", wake="hey_mind").read_text()
    assert "<s> hey_mind" in arpa and "\\3-grams:" in arpa


def test_lm_input_errors(tmp_path, capsys, ckpt):
    from minimind.voice.audio import write_wav

    wav = str(write_wav(tmp_path / "s.wav", np.zeros(1600, np.int16)))
    assert "no such file or directory" in one_line_error(capsys, ["voice", ckpt, "--input", wav, "--lm",
                                                                  str(tmp_path / "missing")])
    (tmp_path / "bad.jsonl").write_text('{"conversations": []}\n{oops\n')
    err = one_line_error(capsys, ["voice", ckpt, "--input", wav, "--lm", str(tmp_path / "bad.jsonl")])
    assert "bad.jsonl:2" in err
    (tmp_path / "zh.txt").write_text("你好\n")
    assert "no English sentences" in one_line_error(capsys, ["voice", ckpt, "--input", wav, "--lm",
                                                             str(tmp_path / "zh.txt")])


def test_sphinx_model_flags(tmp_path, capsys, ckpt):
    wav = str(write_wav(tmp_path / "s.wav", np.zeros(1600, np.int16)))
    err = one_line_error(capsys, ["voice", ckpt, "--input", wav, "--sphinx-model", str(tmp_path / "none")])
    assert "--sphinx-model" in err and "not found" in err
    (tmp_path / "am").mkdir()
    assert "mdef" in one_line_error(capsys, ["voice", ckpt, "--input", wav, "--sphinx-model", str(tmp_path / "am")])
    err = one_line_error(capsys, ["voice", ckpt, "--input", wav, "--wake-word", "hey zorblax"])
    assert "zorblax" in err and "dictionary" in err


# ----------------------------------------------------------------------------- sherpa-onnx

def test_sherpa_missing_models_are_one_line_exit_2(tmp_path, capsys, ckpt):
    wav = str(write_wav(tmp_path / "s.wav", np.zeros(1600, np.int16)))
    base = ["voice", ckpt, "--input", wav, "--backend", "sherpa"]
    assert "--asr-model DIR" in one_line_error(capsys, base)
    err = one_line_error(capsys, base + ["--asr-model", str(tmp_path / "zipformer")])
    assert "--asr-model" in err and "no such directory" in err and "docs/voice.md" in err
    (tmp_path / "zipformer").mkdir()
    (tmp_path / "zipformer" / "tokens.txt").write_text("<blk> 0\n")
    assert "encoder*.onnx" in one_line_error(capsys, base + ["--asr-model", str(tmp_path / "zipformer")])
    assert "go together" in one_line_error(capsys, base + ["--sense-voice", str(tmp_path)])
    err = one_line_error(capsys, base + ["--sense-voice", str(tmp_path / "zipformer"), "--vad-model",
                                         str(tmp_path / "silero_vad.onnx")])
    assert "model*.onnx" in err
    err = one_line_error(capsys, ["voice", ckpt, "--input", wav, "--kws-model", str(tmp_path)])
    assert "--backend sherpa" in err


def test_sherpa_calls_match_the_installed_library():
    """The keyword arguments the backend passes exist in the installed sherpa-onnx (no models needed)."""
    so = pytest.importorskip("sherpa_onnx")
    src = inspect.getsource(__import__("minimind.voice.sherpa", fromlist=["x"]))
    kws = set(inspect.signature(so.KeywordSpotter.__init__).parameters)
    assert {"tokens", "encoder", "decoder", "joiner", "keywords_file", "num_threads", "sample_rate",
            "keywords_threshold"} <= kws
    online = set(inspect.signature(so.OnlineRecognizer.from_transducer).parameters)
    assert {"enable_endpoint_detection", "rule1_min_trailing_silence", "rule2_min_trailing_silence",
            "rule3_min_utterance_length", "num_threads", "sample_rate"} <= online
    sv = set(inspect.signature(so.OfflineRecognizer.from_sense_voice).parameters)
    assert {"model", "tokens", "num_threads", "sample_rate", "use_itn"} <= sv
    cfg = so.VadModelConfig()
    cfg.silero_vad.model, cfg.silero_vad.min_silence_duration, cfg.sample_rate = "x.onnx", 0.8, 16000
    assert cfg.silero_vad.window_size == 512
    for name in ("accept_waveform", "empty", "front", "pop", "flush", "reset"):
        assert hasattr(so.VoiceActivityDetector, name) and f".{name}" in src
    for name in ("is_ready", "decode_stream", "get_result", "reset_stream", "create_stream"):
        assert hasattr(so.KeywordSpotter, name)
    for name in ("is_ready", "decode_stream", "get_result", "is_endpoint", "reset", "create_stream"):
        assert hasattr(so.OnlineRecognizer, name)
    assert "tokens_type" in inspect.signature(so.text2token).parameters


def test_speak_without_espeak_is_one_line(tmp_path, capsys, ckpt, monkeypatch):
    monkeypatch.setattr("minimind.voice.tts.shutil.which", lambda name: None)
    wav = str(write_wav(tmp_path / "s.wav", np.zeros(1600, np.int16)))
    err = one_line_error(capsys, ["voice", ckpt, "--input", wav, "--speak"])
    assert "espeak-ng" in err and "apt-get install" in err


def test_sphinx_flush_of_an_empty_or_frame_aligned_stream():
    from minimind.voice.sphinx import SphinxBackend

    b = SphinxBackend(None)
    assert b.flush() == []
    assert b.accept(np.zeros(b.frame * 3, np.int16)) == [] and b.flush() == []  # nothing pending
    assert b.accept(np.zeros(7, np.int16)) == [] and b.flush() == []
