"""Between written text and spoken words.

A recogniser hears words ("what is twelve plus thirty"), the chat model was trained on written text
("What is 12 + 30?"), and the language model of the recogniser must be built from what people *say*.
So: `spoken()` turns written questions into the words a speaker would utter (for the domain language
model and for word-error-rate references), `written()` turns recognised words back into text for the
chat model. Numbers go through num2words / text2num, libraries made for exactly this.

Word error rate (WER) = (substitutions + deletions + insertions) / reference words, from the
Levenshtein alignment of the word sequences (jiwer computes it).
"""

from __future__ import annotations

import re

_SYMBOLS = {"+": " plus ", "×": " times ", "*": " times ", "÷": " divided by ", "=": " equals ", "%": " percent "}
_QUESTION_WORDS = {"what", "which", "who", "whom", "whose", "where", "when", "why", "how", "is", "are", "do",
                   "does", "did", "can", "could", "would", "will", "should", "name"}


def spoken(text: str) -> str:
    """'What is 3229 plus 38? Use the calculator.' -> 'what is three thousand two hundred and twenty
    nine plus thirty eight use the calculator' (lower case, letters, apostrophes and spaces only)."""
    from num2words import num2words

    for sym, word in _SYMBOLS.items():
        text = text.replace(sym, word)
    text = re.sub(r"(?<=\d)\s*-\s*(?=\d)", " minus ", text)
    text = re.sub(r"(?<=\d)\s*/\s*(?=\d)", " divided by ", text)
    text = re.sub(r"\d+(\.\d+)?", lambda m: f" {num2words(float(m.group()) if m.group(1) else int(m.group()))} ",
                  text)
    text = text.lower().replace("-", " ")
    return " ".join(re.sub(r"[^a-z' ]", " ", text).split())


def written(words: str) -> str:
    """'what is twelve plus thirty' -> 'What is 12 plus 30?': digits, a capital, an end mark."""
    from text_to_num import alpha2digit

    text = " ".join(words.split())
    if not text:
        return ""
    text = alpha2digit(text, "en")
    mark = "" if text[-1] in ".?!" else "?" if text.split()[0].lower() in _QUESTION_WORDS else "."
    return text[0].upper() + text[1:] + mark


def wer(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate of spoken-form word strings (an empty hypothesis is all deletions)."""
    import jiwer

    return jiwer.wer(list(references), [h if h.strip() else "<nothing>" for h in hypotheses]) if references else 0.0


def strip_wake(words: str, wake: str) -> tuple[bool, str]:
    """(True, rest) when the recognised words begin with the wake phrase, else (False, words)."""
    w, ws = words.split(), spoken(wake).split()
    norm = [re.sub(r"\(\d+\)$", "", x).lower().strip(",.!?") for x in w]  # 'which(2)' is a pronunciation variant
    if ws and norm[:len(ws)] == ws:
        return True, " ".join(w[len(ws):])
    return False, words
