"""The neural backend: sherpa-onnx (k2-fsa's ONNX runtime for next-gen Kaldi models), as the public
MiniMind voice variant uses it. Models are directories you download once (docs/voice.md):

    wake word    KeywordSpotter: a small streaming zipformer transducer whose search is restricted to
                 the keyword's tokens (`--kws-model`); it fires when the keyword's average token
                 probability exceeds the threshold. The keyword is tokenized from `--wake-word` with the
                 model's own BPE/pinyin units (sherpa_onnx.text2token, as `sherpa-onnx-cli text2token`).
                 Without a KWS model, an utterance "begins with the wake word" when its transcript does.
    recognition  either a streaming zipformer transducer with endpoint detection (`--asr-model`;
                 Yao et al. 2023, "Zipformer"): rule 1 ends an utterance after 2.4 s of silence with
                 nothing decoded, rule 2 after `trailing_silence` s of silence after speech, rule 3 at
                 20 s; or Silero VAD segments (`--vad-model`) transcribed whole by SenseVoice
                 (`--sense-voice`, a non-autoregressive encoder; Chinese, English, and more).

Audio is given to sherpa-onnx as float32 in [-1, 1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .audio import RATE
from .backend import Heard
from .text import strip_wake

KWS_THRESHOLD = 0.25
HELP = "download it as docs/voice.md shows"


def import_sherpa():
    try:
        import sherpa_onnx
    except ImportError:
        raise UserError("the sherpa backend needs sherpa-onnx: pip install 'minimind[voice]'") from None
    return sherpa_onnx


def _one(model_dir: Path, flag: str, pattern: str) -> str:
    """The file matching `pattern` in the directory; an int8 build where there is one (faster on CPU)."""
    hits = sorted(model_dir.glob(pattern))
    if not hits:
        raise UserError(f"{flag} {model_dir}: no {pattern} in it; {HELP}")
    int8 = [h for h in hits if ".int8." in h.name]
    return str((int8 or hits)[0])


def _dir(path, flag: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{flag} {path}: no such directory; {HELP}")
    return p


def transducer_files(path, flag: str) -> dict:
    d = _dir(path, flag)
    return {"tokens": _one(d, flag, "tokens.txt"), "encoder": _one(d, flag, "encoder*.onnx"),
            "decoder": _one(d, flag, "decoder*.onnx"), "joiner": _one(d, flag, "joiner*.onnx")}


def keywords_line(so, wake: str, model_dir: Path) -> str:
    """'hey mind' -> '▁HE Y ▁MI ND @hey_mind': the phrase in the KWS model's own token units."""
    tokens = str(model_dir / "tokens.txt")
    try:
        if (model_dir / "bpe.model").is_file():
            units = so.text2token([wake.upper()], tokens=tokens, tokens_type="bpe",
                                  bpe_model=str(model_dir / "bpe.model"))
        elif not wake.isascii():
            units = so.text2token([wake], tokens=tokens, tokens_type="ppinyin")
        else:
            raise UserError(f"--kws-model {model_dir}: no bpe.model to spell {wake!r} with; give an English KWS "
                            "model or a Chinese wake word")
    except ImportError as e:  # text2token spells with sentencepiece (English) or pypinyin (Chinese)
        raise UserError(f"--wake-word {wake!r}: spelling it for the KWS model needs {e.name}: "
                        f"pip install {e.name}") from None
    return " ".join(units[0]) + " @" + "_".join(wake.split())


def _load(flag: str, make):
    """Build a sherpa-onnx object; a file it rejects (wrong model kind, corrupt download) is one line."""
    try:
        return make()
    except (RuntimeError, ValueError, AssertionError, TypeError) as e:
        raise UserError(f"{flag}: sherpa-onnx could not load the model ({e}); is it the right kind? {HELP}") from None


def check_models(kws_model, asr_model, vad_model, sense_voice) -> dict:
    """Validate the model flags before anything loads -> the files each model needs."""
    files = {}
    if asr_model:
        files["asr"] = transducer_files(asr_model, "--asr-model")
    elif sense_voice or vad_model:
        if not (sense_voice and vad_model):
            raise UserError("--sense-voice and --vad-model go together (SenseVoice transcribes what Silero VAD cuts)")
        d = _dir(sense_voice, "--sense-voice")
        files["sense_voice"] = {"model": _one(d, "--sense-voice", "model*.onnx"),
                                "tokens": _one(d, "--sense-voice", "tokens.txt")}
        if not Path(vad_model).is_file():
            raise UserError(f"--vad-model {vad_model}: no such file (silero_vad.onnx); {HELP}")
        files["vad"] = str(vad_model)
    else:
        raise UserError("--backend sherpa needs --asr-model DIR (streaming zipformer) or --sense-voice DIR with "
                        f"--vad-model FILE; {HELP}")
    if kws_model:
        files["kws"] = transducer_files(kws_model, "--kws-model")
    return files


class SherpaBackend:
    sample_rate = RATE

    def __init__(self, wake_word: str | None = "hey mind", threshold: float | None = None, kws_model=None,
                 asr_model=None, vad_model=None, sense_voice=None, threads: int = 2,
                 trailing_silence: float = 0.8, kws_keywords=None):
        files = check_models(kws_model, asr_model, vad_model, sense_voice)
        if kws_keywords is not None and kws_model is None:
            raise UserError("--kws-keywords needs --kws-model (the model the keywords are spelled for)")
        so = import_sherpa()
        self.wake_word, self.clock, self.woke = wake_word, 0, False
        threshold = KWS_THRESHOLD if threshold is None else threshold
        if wake_word and not 0 < threshold < 1:
            raise UserError(f"--wake-threshold {threshold}: the sherpa keyword threshold is a probability in (0, 1)")
        self.kws = None
        if wake_word and "kws" in files:
            kw_file = self._keywords_file(so, wake_word, Path(kws_model), kws_keywords)
            self.kws = _load("--kws-model", lambda: so.KeywordSpotter(
                **files["kws"], keywords_file=str(kw_file), num_threads=threads, sample_rate=RATE,
                keywords_threshold=threshold))
            self.kws_stream = self.kws.create_stream()
        recogniser = f"streaming zipformer {asr_model}" if asr_model else f"Silero VAD + SenseVoice {sense_voice}"
        self.summary = f"sherpa-onnx: {recogniser}" + (f", keyword spotter {kws_model}" if self.kws else "")
        self.asr = None
        if "asr" in files:
            self._online(so, files["asr"], threads, trailing_silence)
        else:
            self._vad_sense_voice(so, files, threads, trailing_silence)

    def _online(self, so, files: dict, threads: int, trailing_silence: float) -> None:
        self.asr = _load("--asr-model", lambda: so.OnlineRecognizer.from_transducer(
            **files, num_threads=threads, sample_rate=RATE, enable_endpoint_detection=True,
            rule1_min_trailing_silence=2.4, rule2_min_trailing_silence=trailing_silence,
            rule3_min_utterance_length=20.0))
        self.stream, self.utt_start = self.asr.create_stream(), None

    def _vad_sense_voice(self, so, files: dict, threads: int, trailing_silence: float) -> None:
        self.offline = _load("--sense-voice", lambda: so.OfflineRecognizer.from_sense_voice(
            **files["sense_voice"], num_threads=threads, sample_rate=RATE, use_itn=True))
        cfg = so.VadModelConfig()
        cfg.silero_vad.model = files["vad"]
        cfg.silero_vad.min_silence_duration = trailing_silence
        cfg.sample_rate = RATE
        cfg.num_threads = 1
        self.vad = _load("--vad-model", lambda: so.VoiceActivityDetector(cfg, buffer_size_in_seconds=60))
        self.window = cfg.silero_vad.window_size
        self.pending = np.zeros(0, dtype=np.float32)

    def _keywords_file(self, so, wake_word: str, kws_model: Path, given) -> Path:
        """A keywords file made by hand (`sherpa-onnx-cli text2token`), or --wake-word spelled for the model."""
        if given is not None:
            if not Path(given).is_file():
                raise UserError(f"--kws-keywords {given}: no such file")
            return Path(given)
        self._tmp = tempfile.TemporaryDirectory(prefix="minimind-kws-")
        path = Path(self._tmp.name) / "keywords.txt"
        path.write_text(keywords_line(so, wake_word, kws_model) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------ the interface
    def accept(self, pcm: np.ndarray) -> list[Heard]:
        x = np.asarray(pcm, dtype=np.int16).astype(np.float32) / 32768.0
        self.clock += len(x)
        if self.kws is not None and self.asr is not None:
            self._spot(self.kws_stream, x)
        return self._streaming(x) if self.asr is not None else self._segments(x)

    def flush(self) -> list[Heard]:
        """Close the open utterance; the next audio is a new stream (its clock starts at 0)."""
        tail = np.zeros(int(0.5 * RATE), dtype=np.int16)  # pad, so trailing frames are decoded
        out = self.accept(tail)
        if self.asr is not None:
            self.stream.input_finished()
            while self.asr.is_ready(self.stream):
                self.asr.decode_stream(self.stream)
            text = self.asr.get_result(self.stream).strip()
            out += [self._heard(text, self.utt_start or 0.0, self.clock / RATE)] if text else []
            self.stream, self.utt_start = self.asr.create_stream(), None
        else:
            self.vad.flush()
            out += self._drain()
            self.vad.reset()
        if self.kws is not None:
            self.kws_stream = self.kws.create_stream()
        self.clock, self.woke = 0, False
        return out

    # ------------------------------------------------------------------ streaming zipformer
    def _streaming(self, x: np.ndarray) -> list[Heard]:
        self.stream.accept_waveform(RATE, x)
        while self.asr.is_ready(self.stream):
            self.asr.decode_stream(self.stream)
        text = self.asr.get_result(self.stream).strip()
        if text and self.utt_start is None:
            self.utt_start = (self.clock - len(x)) / RATE
        if not self.asr.is_endpoint(self.stream):
            return []
        self.asr.reset(self.stream)
        start, self.utt_start = self.utt_start, None
        return [self._heard(text, start, self.clock / RATE)] if text else []

    # ------------------------------------------------------------------ Silero VAD + SenseVoice
    def _segments(self, x: np.ndarray) -> list[Heard]:
        buf = np.concatenate([self.pending, x])
        n = len(buf) // self.window * self.window
        for i in range(0, n, self.window):
            self.vad.accept_waveform(buf[i:i + self.window])
        self.pending = buf[n:]
        return self._drain()

    def _drain(self) -> list[Heard]:
        out = []
        while not self.vad.empty():
            seg = self.vad.front
            samples, start = np.asarray(seg.samples, dtype=np.float32), seg.start / RATE
            self.vad.pop()
            if self.kws is not None:  # a fresh spotter over just this utterance
                s = self.kws.create_stream()
                self._spot(s, np.concatenate([samples, np.zeros(int(0.66 * RATE), np.float32)]))
            st = self.offline.create_stream()
            st.accept_waveform(RATE, samples)
            self.offline.decode_stream(st)
            text = st.result.text.strip()
            if text:
                out.append(self._heard(text, start, start + len(samples) / RATE))
        return out

    # ------------------------------------------------------------------ wake word
    def _spot(self, stream, x: np.ndarray) -> None:
        stream.accept_waveform(RATE, x)
        while self.kws.is_ready(stream):
            self.kws.decode_stream(stream)
            if self.kws.get_result(stream):
                self.woke = True
                self.kws.reset_stream(stream)  # as sherpa-onnx asks: right after a detection

    def _heard(self, text: str, start: float, end: float) -> Heard:
        said, rest = strip_wake(text.lower(), self.wake_word) if self.wake_word else (False, text)
        wake, self.woke = (self.woke or said), False
        return Heard(rest if said else text, wake, start, end)
