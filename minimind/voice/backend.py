"""The one small interface every voice backend implements.

A backend eats 16 kHz mono int16 audio in chunks of any size and reports each utterance when its
end is detected (voice activity detection / endpointing) as a `Heard`: the recognised words after
the wake word, whether the utterance began with the wake word, and where it lay on the audio clock
(seconds since the stream began). Everything else - which utterances are meant for the model, the
chat, speaking - is shared (listen.py, cli.py), so a new recogniser is one class with two methods.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Heard:
    words: str        # recognised words, wake word removed (spoken form: "what is twelve plus thirty")
    wake: bool        # the utterance began with the wake word
    start: float      # seconds on the audio clock
    end: float        # end of speech as the endpointer placed it


class Backend(Protocol):
    sample_rate: int
    wake_word: str | None  # None: the backend does not look for one
    summary: str           # one line: the models in use (printed at start)

    def accept(self, pcm: np.ndarray) -> list[Heard]:
        """Feed audio (int16, mono); return the utterances that ended inside it."""

    def flush(self) -> list[Heard]:
        """The input ended: close an utterance still open."""
