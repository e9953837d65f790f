"""Which utterances are meant for the model: the wake-word state machine.

    asleep --(utterance that begins with the wake word)--> it carries a question: answer it
                                                           only the wake word: awake
    awake  --(next utterance within `timeout` s of audio)--> answer it, asleep again
           --(nothing heard within `timeout` s)------------> asleep
    without a wake word (--no-wake-word, push-to-talk): every utterance is a question.

Time is the audio clock of the utterances, not the wall clock, so a file gives the same turns
however fast it is read.
"""

from __future__ import annotations

from dataclasses import dataclass

from .backend import Heard


@dataclass
class Listener:
    need_wake: bool = True
    timeout: float = 8.0
    awake_until: float | None = None

    def hear(self, h: Heard) -> tuple[str, str | None]:
        """-> (event, question words or None); event is one of 'question', 'wake', 'ignored', 'empty'."""
        if self.awake_until is not None and h.start > self.awake_until:
            self.awake_until = None  # timed out: asleep again
        if not self.need_wake or (self.awake_until is not None and not h.wake):
            if not h.words:  # noise, or nothing the recogniser knows: keep waiting
                return "empty", None
            self.awake_until = None
            return "question", h.words
        if h.wake:
            if h.words:
                self.awake_until = None
                return "question", h.words
            self.awake_until = h.end + self.timeout
            return "wake", None
        return "ignored", None
