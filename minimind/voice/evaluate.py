"""Measuring the voice front end on synthetic speech: wake-word detection, word error rate, latency.

The test set is made, not downloaded: English questions from the corpus's held-out file
(`minimind data synth` writes eval/heldout.jsonl: questions never seen in training), spoken by
espeak-ng in several voices and speeds, once after the wake phrase ("hey mind, what is ...") and
once without it, between 1 s of silence, with white noise at a fixed signal-to-noise ratio the way a
microphone in a quiet room adds it:

    noise sigma = rms(speech) / 10 ** (snr_db / 20)

    detection rate    = wake utterances heard as woken / wake utterances
    false wake rate   = plain utterances heard as woken / plain utterances
    WER               = word error rate of the question part (wake phrase removed), all utterances

Used by tests/test_voice_speech.py (thresholds) and bench/voice.py (the table in docs/voice.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import RATE, chunks
from .text import spoken, wer

VOICES = ["en-us", "en", "en-gb-x-rp", "en-us+f2", "en-us+m3", "en-029"]
SPEEDS = [130, 165, 200]  # words per minute (espeak-ng's default is 175)


@dataclass
class Sample:
    question: str       # written, as in the corpus
    wake: bool          # spoken after the wake phrase
    voice: str
    wpm: int
    audio: np.ndarray   # int16, 16 kHz, with 1 s of (noisy) silence either side
    speech_end: float   # seconds: where the last voiced sample is


def heldout_questions(data_dir, limit: int | None = None) -> list[str]:
    """English user questions of eval/heldout.jsonl, in file order."""
    out = []
    for line in open(Path(data_dir) / "eval" / "heldout.jsonl", encoding="utf-8"):
        rec = json.loads(line)
        q = next(m["content"] for m in rec["conversations"] if m["role"] == "user")
        if q.isascii() and q not in out:
            out.append(q)
    return out[:limit]


def with_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator, pad: float = 1.0) -> np.ndarray:
    """Speech between `pad` s of silence, plus white noise `snr_db` below the speech's rms."""
    speech = x.astype(np.float64)
    sigma = np.sqrt(np.mean(speech[np.abs(speech) > 100] ** 2)) / 10 ** (snr_db / 20)
    sil = np.zeros(int(pad * RATE))
    y = np.concatenate([sil, speech, sil])
    return np.clip(np.round(y + rng.normal(0, sigma, len(y))), -32768, 32767).astype(np.int16)


def make_set(questions: list[str], wake_word: str = "hey mind", snr_db: float = 30.0, seed: int = 0) -> list[Sample]:
    """Each question twice (after the wake phrase and without), voice and speed cycling."""
    from .tts import synthesize

    rng = np.random.default_rng(seed)
    out = []
    for i, q in enumerate(questions):
        voice, wpm = VOICES[i % len(VOICES)], SPEEDS[i // len(VOICES) % len(SPEEDS)]
        for wake in (True, False):
            clean = synthesize(f"{wake_word}, {q}" if wake else q, voice, wpm)
            voiced = np.flatnonzero(np.abs(clean) > 500)
            end = 1.0 + (voiced[-1] + 1 if len(voiced) else len(clean)) / RATE
            out.append(Sample(q, wake, voice, wpm, with_noise(clean, snr_db, rng), end))
    return out


def listen(backend, audio: np.ndarray, chunk: int = 1600) -> list:
    """Stream one recording through a backend -> its utterances (Heard)."""
    heard = []
    for c in chunks(audio, chunk):
        heard += backend.accept(c)
    return heard + backend.flush()


def score(backend, samples: list[Sample]) -> dict:
    """Wake detection, false wakes and WER of one backend on a test set (plus decode speed)."""
    hits = {True: 0, False: 0}
    refs, hyps, rows = [], [], []
    t0, audio_s = time.perf_counter(), 0.0
    for s in samples:
        heard = listen(backend, s.audio)
        audio_s += len(s.audio) / RATE
        woke = any(h.wake for h in heard)
        hits[s.wake] += woke
        words = " ".join(h.words for h in heard if h.words)
        refs.append(spoken(s.question))
        hyps.append(words)
        rows.append({"question": s.question, "wake": s.wake, "voice": s.voice, "wpm": s.wpm, "woke": woke,
                     "heard": words})
    n_wake = sum(s.wake for s in samples)
    n_plain = len(samples) - n_wake
    return {"detection": hits[True] / max(1, n_wake), "false_wake": hits[False] / max(1, n_plain),
            "n_wake": n_wake, "n_plain": n_plain, "wer": wer(refs, hyps),
            "real_time_factor": (time.perf_counter() - t0) / audio_s, "rows": rows}
