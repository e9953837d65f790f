"""Speech out, and speech for tests: espeak-ng.

Why espeak-ng: it is one small Debian/Homebrew package (a few MB), speaks English and Mandarin (the
built-in corpus is bilingual) and 100 other languages, needs no model download, and runs far faster
than real time on any CPU. Neural voices (piper, Coqui) sound better but fetch their voice models
from a hub at first use; a package you install is all espeak-ng needs.

`synthesize` also makes the test speech: several voices and speeds of the same sentence, resampled
from espeak-ng's 22.05 kHz to the recogniser's 16 kHz by zero-padding/truncating the spectrum
(band-limited interpolation: X16k[k] = X22k[k] for |k| < 8 kHz, times the length ratio).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import wave

import numpy as np

from ..errors import UserError
from .audio import RATE


def espeak() -> str:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("--speak needs espeak-ng: apt-get install espeak-ng (brew install espeak-ng)")
    return exe


def resample(x: np.ndarray, rate: int, to: int = RATE) -> np.ndarray:
    """Band-limited resampling of int16 audio through the FFT."""
    if rate == to:
        return x
    n_out = round(len(x) * to / rate)
    spec = np.fft.rfft(x.astype(np.float64))
    y = np.fft.irfft(spec[: n_out // 2 + 1], n=n_out) * n_out / len(x)
    return np.clip(np.round(y), -32768, 32767).astype(np.int16)


def synthesize(text: str, voice: str = "en-us", wpm: int = 160, pitch: int = 50) -> np.ndarray:
    """text -> int16 mono samples at 16 kHz."""
    wav = subprocess.run([espeak(), "-v", voice, "-s", str(wpm), "-p", str(pitch), "--stdout", text],
                         capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return resample(x, rate)


def speak(text: str, voice: str = "en-us", wpm: int = 160) -> None:
    """Read text aloud on the default audio device (espeak-ng plays it itself); blocks until done."""
    if text.strip():
        subprocess.run([espeak(), "-v", voice, "-s", str(wpm), text], capture_output=True)
