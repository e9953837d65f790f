"""Audio in: a WAV file, raw PCM on stdin, or the microphone, as 16 kHz mono int16 chunks.

Every source yields numpy int16 arrays of `chunk` samples (the last may be shorter) and checks its
format first: a file that is not a readable 16-bit PCM WAV, or audio at another sample rate than the
recogniser's, stops with one line that says how to convert it.
"""

from __future__ import annotations

import queue
import sys
import wave
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError

RATE = 16000  # every backend's models are trained on 16 kHz audio
CONVERT = "convert it with `ffmpeg -i IN -ac 1 -ar 16000 -sample_fmt s16 OUT.wav` (or sox IN -r 16000 -c 1 -b 16 OUT.wav)"


def check_rate(rate: int, where: str) -> None:
    if rate != RATE:
        raise UserError(f"{where}: sample rate {rate} Hz; the recogniser needs {RATE} Hz: {CONVERT}")


def read_wav(path) -> np.ndarray:
    """The whole file as int16 mono samples at 16 kHz (several channels are averaged)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--input {path}: no such file")
    try:
        with wave.open(str(path), "rb") as w:
            rate, width, channels, n = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
            data = w.readframes(n)
    except (wave.Error, EOFError, OSError) as e:
        raise UserError(f"--input {path}: not a readable WAV file ({e}); {CONVERT}") from None
    if width != 2:
        raise UserError(f"--input {path}: {8 * width}-bit samples; 16-bit PCM is needed: {CONVERT}")
    check_rate(rate, f"--input {path}")
    x = np.frombuffer(data, dtype="<i2")
    if channels > 1:
        x = x[: len(x) // channels * channels].reshape(-1, channels).mean(axis=1).astype(np.int16)
    return x


def write_wav(path, samples: np.ndarray, rate: int = RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return Path(path)


def chunks(x: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), chunk):
        yield x[i:i + chunk]


def stdin_chunks(rate: int, chunk: int, stream=None) -> Iterator[np.ndarray]:
    """Raw little-endian int16 mono PCM from stdin (e.g. `arecord -f S16_LE -r 16000 -c 1 | ...`)."""
    check_rate(rate, "--sample-rate")  # now, not at the first read
    return _pcm(stream or sys.stdin.buffer, chunk)


def _pcm(stream, chunk: int) -> Iterator[np.ndarray]:
    carry = b""
    while True:
        data = stream.read(2 * chunk)
        if not data:
            break
        data, carry = carry + data, b""
        if len(data) % 2:  # half a sample: keep the byte for the next read
            data, carry = data[:-1], data[-1:]
        yield np.frombuffer(data, dtype="<i2")


class Microphone:
    """The default input device through PortAudio (sounddevice), chunks pushed by its callback.

    `discard()` drops what was recorded meanwhile: called after each reply, so the recogniser
    never hears the model's own spoken answer (half duplex).
    """

    def __init__(self, rate: int = RATE, chunk: int = 1600, device=None):
        check_rate(rate, "--sample-rate")
        try:
            import sounddevice
        except ImportError:
            raise UserError("the microphone needs sounddevice: pip install 'minimind[voice]' "
                            "(or give --input FILE.wav / --input - for raw PCM on stdin)") from None
        except OSError as e:  # sounddevice imports, but the PortAudio library is missing
            raise UserError(f"the microphone needs PortAudio ({e}): apt-get install libportaudio2 "
                            "(or give --input FILE.wav / --input - for raw PCM on stdin)") from None
        self.q: queue.Queue = queue.Queue()
        try:
            self.stream = sounddevice.InputStream(samplerate=rate, blocksize=chunk, channels=1, dtype="int16",
                                                  device=device, callback=self._callback)
            self.stream.start()
        except Exception as e:  # PortAudioError: no device, busy device, unsupported rate
            raise UserError(f"cannot open the microphone: {e} (or give --input FILE.wav)") from None

    def _callback(self, indata, frames, time, status):
        self.q.put(indata[:, 0].copy())

    def discard(self) -> None:
        while not self.q.empty():
            self.q.get_nowait()

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            yield self.q.get()

    def close(self) -> None:
        self.stream.stop()
        self.stream.close()
