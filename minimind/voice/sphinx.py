"""The offline backend: pocketsphinx (CMU Sphinx), whose wheel ships an English acoustic model.

    endpointer   pocketsphinx.Endpointer: a WebRTC-style voice activity detector over 30 ms frames;
                 speech starts when most frames of a 0.3 s window are voiced and ends when most are
                 not, so an utterance is closed about `vad_window` seconds after the voice stops.
    recogniser   a continuous-density HMM decoder (Huggins-Daines et al. 2006, "PocketSphinx") fed
                 while the user speaks, so at the endpoint only the final search is left:
                     words* = argmax_W  log P(audio | W) + lw * log P(W) + |W| * log wip
                 with P(W) the general English trigram model, or a domain model (lm.py, --lm).
    wake word    with a domain model: the wake phrase is an optional prefix inside the language model,
                 so one search decides "wake + question" against "question" (threshold = log10 prior
                 odds against the wake phrase). Without one: pocketsphinx's keyphrase spotter runs
                 beside the recogniser and fires when the phrase's likelihood beats a phone loop's by
                 the factor 10**threshold (Rybach et al. style keyword spotting with a filler model).

Measured on synthetic speech (docs/voice.md): the spotter is the weaker of the two; build a domain
model from the corpus the checkpoint was trained on.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from .audio import RATE
from .backend import Heard
from .text import spoken

KWS_THRESHOLD = -40.0  # log10; tuned on espeak-ng speech at 30 dB SNR (bench/voice.py)
LM_THRESHOLD = 0.0     # log10 prior odds against the wake phrase: even odds
# words of the built-in corpus (and its name) missing from the bundled CMU dictionary, in its phone set
EXTRA_WORDS = {"omnivore": "AA M N AH V AO R", "omnivores": "AA M N AH V AO R Z", "minimind": "M IH N IY M AY N D"}


def import_pocketsphinx():
    try:
        import pocketsphinx
    except ImportError:
        raise UserError("the sphinx backend needs pocketsphinx: pip install 'minimind[voice]'") from None
    return pocketsphinx


def _word(seg_word: str) -> str | None:
    """A recognised word from a segment name ('which(2)' -> 'which'); None for silence and fillers."""
    if seg_word.startswith(("<", "[", "+")):
        return None
    return re.sub(r"\(\d+\)$", "", seg_word)


class SphinxBackend:
    sample_rate = RATE

    def __init__(self, wake_word: str | None = "hey mind", threshold: float | None = None, lm=None,
                 model_dir=None, dictionary=None, vad_window: float = 0.3):
        ps = import_pocketsphinx()
        self.wake_word, self.mode = wake_word, "lm" if lm is not None else "kws"
        config = {"loglevel": "FATAL", "dither": True, "seed": 1}  # dither (seeded): all-zero frames
        if model_dir is not None:                                   # have no log energy
            config["hmm"] = str(_need(model_dir, "--sphinx-model", "mdef"))
        if dictionary is not None:
            config["dict"] = str(_need(dictionary, "--sphinx-dict"))
        self.words = _pronunciations(Path(config.get("dict") or ps.get_model_path("en-us/cmudict-en-us.dict")))
        extra = {w: p for w, p in EXTRA_WORDS.items() if w not in self.words} if dictionary is None else {}
        self.words.update({w: [p] for w, p in extra.items()})
        self._check_wake_word()
        self.summary, self.wake_token = "general English language model", None
        if lm is not None:
            self._tmp = tempfile.TemporaryDirectory(prefix="minimind-voice-")
            if wake_word:
                self.wake_token = "_".join(spoken(wake_word).split())
                extra.update(self._wake_pronunciations())
            config["lm"] = self._domain_lm(lm, LM_THRESHOLD if threshold is None else threshold)
        self.asr = _decoder(ps, config, extra)
        self.kws = None
        if wake_word and self.mode == "kws":
            t = KWS_THRESHOLD if threshold is None else threshold
            self.kws = _decoder(ps, {**config, "keyphrase": spoken(wake_word), "kws_threshold": 10.0 ** t}, extra)
        self._endpointer = lambda: ps.Endpointer(window=vad_window, sample_rate=RATE)
        self.ep = self._endpointer()
        self.frame = self.ep.frame_bytes // 2  # samples per VAD frame
        self.pending = np.zeros(0, dtype=np.int16)
        self.in_utt, self.wake_end = False, None

    def _check_wake_word(self) -> None:
        if not self.wake_word:
            return
        words = spoken(self.wake_word).split()
        missing = [w for w in words if w not in self.words]
        if not words or missing:
            raise UserError(f"--wake-word {self.wake_word!r}: {missing or 'no words'} not in the pronunciation "
                            "dictionary; choose other words or add them with --sphinx-dict")

    def _wake_pronunciations(self) -> dict[str, str]:
        """The wake phrase as one word of the language model ('hey_mind'), so that its words cannot be
        recognised apart ('the mind ...'): every combination of its words' pronunciations, each also
        without a word-initial HH, since /h/ is the weakest consonant and is often barely there."""
        variants = [""]
        for w in spoken(self.wake_word).split():
            prons = self.words[w] + [p[3:] for p in self.words[w] if p.startswith("HH ")]
            variants = [f"{v} {p}".strip() for v in variants for p in prons][:16]
        names = [self.wake_token] + [f"{self.wake_token}({i})" for i in range(2, len(variants) + 1)]
        return dict(zip(names, variants))

    def _domain_lm(self, source, threshold: float) -> str:
        """Build the domain trigram model (wake phrase inside it at prior odds 10**-threshold) -> its path."""
        from .lm import build_arpa, corpus_sentences, in_vocabulary

        sentences, dropped = in_vocabulary(corpus_sentences(source), self.words)
        self.summary = (f"domain language model: {len(sentences)} sentences from {source}"
                        + (f" ({dropped} left out: words without a pronunciation)" if dropped else ""))
        return str(build_arpa(sentences, Path(self._tmp.name) / "domain.arpa", self.wake_token, 10 ** -threshold))

    # ------------------------------------------------------------------ the interface
    def accept(self, pcm: np.ndarray) -> list[Heard]:
        x = np.concatenate([self.pending, np.asarray(pcm, dtype=np.int16)])
        n = len(x) // self.frame * self.frame
        self.pending = x[n:]
        out = []
        for i in range(0, n, self.frame):
            speech = self.ep.process(x[i:i + self.frame].tobytes())
            heard = self._feed(speech)
            if heard is not None:
                out.append(heard)
        return out

    def flush(self) -> list[Heard]:
        """Close the open utterance; the next audio is a new stream (its clock starts at 0)."""
        tail = self.pending if len(self.pending) else np.zeros(1, dtype=np.int16)  # it rejects an empty one
        speech = self.ep.end_stream(tail.tobytes())
        self.pending = np.zeros(0, dtype=np.int16)
        if speech is not None and not self.in_utt:
            self._start()
        out = []
        if self.in_utt:
            if speech:
                self._process(speech)
            out.append(self._end())
        self.ep = self._endpointer()
        return out

    # ------------------------------------------------------------------ one utterance
    def _feed(self, speech) -> Heard | None:
        if speech is None:
            return None
        if not self.in_utt:
            self._start()
        self._process(speech)
        return None if self.ep.in_speech else self._end()

    def _start(self) -> None:
        self.in_utt, self.wake_end, self.start = True, None, self.ep.speech_start
        self.asr.start_utt()
        if self.kws:
            self.kws.start_utt()

    def _process(self, speech: bytes) -> None:
        self.asr.process_raw(speech)
        if self.kws and self.wake_end is None:
            self.kws.process_raw(speech)
            if self.kws.hyp() is not None:  # the phrase was spotted: remember where it ended
                self.wake_end = max(s.end_frame for s in self.kws.seg())

    def _end(self) -> Heard:
        self.in_utt = False
        self.asr.end_utt()
        hyp = self.asr.hyp()
        end = self.ep.speech_end
        if self.kws:
            self.kws.end_utt()
            words = [w for s in self.asr.seg() if (self.wake_end is None or s.start_frame > self.wake_end)
                     and (w := _word(s.word))]
            return Heard(" ".join(words), self.wake_end is not None, self.start, end)
        words = (hyp.hypstr if hyp is not None else "").split()
        wake = bool(words) and words[0] == self.wake_token
        return Heard(" ".join(words[wake:]), wake, self.start, end)


def _decoder(ps, config: dict, extra_words: dict):
    try:
        d = ps.Decoder(**config)
    except (RuntimeError, ValueError) as e:  # a file the model needs is missing or malformed
        raise UserError(f"pocketsphinx could not load its model ({e}); check --sphinx-model / --sphinx-dict") from None
    for i, (word, phones) in enumerate(extra_words.items()):
        d.add_word(word, phones, i == len(extra_words) - 1)  # rebuild the search once, after the last
    return d


def _need(path, flag: str, inside: str | None = None) -> Path:
    p = Path(path)
    if not p.exists() or (inside and not (p / inside).is_file()):
        what = f"{p / inside}" if inside and p.exists() else f"{p}"
        raise UserError(f"{flag} {path}: {what} not found")
    return p


def _pronunciations(dict_path: Path) -> dict[str, list[str]]:
    """word -> its pronunciations (phone strings) in a CMU-format dictionary ('which(2)' is a variant)."""
    out: dict[str, list[str]] = {}
    with open(dict_path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split(maxsplit=1)
            if len(parts) == 2:
                out.setdefault(_word(parts[0]), []).append(" ".join(parts[1].split()))
    return out
