"""`minimind voice` on speech synthesised by espeak-ng: wake-word detection, word error rate, and a
spoken question answered by a trained checkpoint from a WAV file and from raw PCM on stdin."""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("pocketsphinx", reason="the voice extra is not installed: pip install 'minimind[voice]'")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed (apt-get install espeak-ng; `make test` tries): the speech these "
                "tests listen to is synthesised with it", allow_module_level=True)

from minimind.cli import main  # noqa: E402
from minimind.voice.audio import write_wav  # noqa: E402
from minimind.voice.evaluate import heldout_questions, listen, make_set, score, with_noise  # noqa: E402
from minimind.voice.sphinx import SphinxBackend  # noqa: E402
from minimind.voice.tts import synthesize  # noqa: E402

QUESTION = "what is twelve plus thirty?"


def noisy(text, voice="en-us", wpm=160, seed=0):
    return with_noise(synthesize(text, voice, wpm), 30.0, np.random.default_rng(seed))


@pytest.fixture(scope="module")
def domain(corpus):
    return SphinxBackend("hey mind", lm=corpus)


def test_wake_and_question_in_one_breath(domain):
    heard = listen(domain, np.concatenate([noisy("hey mind, " + QUESTION), noisy("how many legs does a spider have?")]))
    assert [(h.wake, h.words) for h in heard] == [(True, "what is twelve plus thirty"),
                                                 (False, "how many legs does a spider have")]
    assert heard[0].end < heard[1].start  # on one audio clock, in order


@pytest.mark.slow
def test_keyphrase_spotter_threshold_without_a_domain_model():
    """pocketsphinx's spotter beside the general English model: the threshold trades misses for false wakes."""
    wake, plain = noisy("hey mind, what is the capital of france"), noisy("what is the capital of france")

    def woke(threshold):
        b = SphinxBackend("hey mind", threshold=threshold)
        return [any(h.wake for h in listen(b, x)) for x in (wake, plain)]

    assert woke(-5) == [False, False]   # strict: misses the wake phrase
    assert woke(-60)[0]                 # lax: catches it (and wakes on plain questions more often;
                                        # the default -40 in between: its rates in docs/voice.md)


@pytest.mark.slow
def test_detection_and_word_error_rate_on_heldout_questions(tmp_path):
    """>= 20 held-out questions, 6 voices x 3 speeds, each with and without the wake phrase, 30 dB SNR."""
    from minimind.data.synth import synth_corpus

    data = tmp_path / "data"
    synth_corpus(data, seed=0, size=0.3, progress=False)
    samples = make_set(heldout_questions(data, 24))
    assert sum(s.wake for s in samples) >= 20 and sum(not s.wake for s in samples) >= 20
    assert len({s.voice for s in samples}) >= 6 and len({s.wpm for s in samples}) >= 3
    r = score(SphinxBackend("hey mind", lm=data), samples)
    print(f"\ndomain LM: detection {r['detection']:.0%}, false wakes {r['false_wake']:.0%}, WER {r['wer']:.1%}")
    assert r["detection"] >= 0.9
    assert r["false_wake"] <= 0.1
    assert r["wer"] <= 0.30


ANSWER = "12 + 30 = 42."


@pytest.fixture(scope="module")
def trained(corpus, tokenizer_dir, tmp_path_factory):
    """A tiny model that has learnt one answer: pretrained a few steps, then fine-tuned on the
    conversation "What is 12 plus 30?" -> ANSWER until it has it by heart (seconds)."""
    out = tmp_path_factory.mktemp("voice_ckpt")
    convo = {"conversations": [{"role": "user", "content": "What is 12 plus 30?"},
                               {"role": "assistant", "content": ANSWER}]}
    (out / "sft.jsonl").write_text((json.dumps(convo) + "\n") * 64)
    shape = ["--hidden-size", "64", "--num-layers", "2", "--num-heads", "4", "--num-kv-heads", "2", "--dtype", "fp32",
             "--batch-size", "4", "--no-progress", "--warmup", "2"]
    assert main(["pretrain", "--data", str(corpus / "pretrain.jsonl"), "--tokenizer", str(tokenizer_dir),
                 "--out", str(out / "pt"), "--preset", "nano", "--max-seq-len", "64", "--steps", "2", *shape]) == 0
    assert main(["sft", "--data", str(out / "sft.jsonl"), "--init", str(out / "pt"), "--out", str(out / "sft"),
                 "--max-seq-len", "64", "--steps", "60", "--lr", "3e-3", *shape]) == 0
    return out / "sft"


def greedy_reply(ckpt, question):
    from minimind.infer.chat import stream_reply
    from minimind.infer.generate import Generator, SamplingParams, load_for_inference

    gen = Generator(*load_for_inference(ckpt, "cpu", "fp32"))
    buf = io.StringIO()
    stream_reply(gen, [{"role": "user", "content": question}], SamplingParams(temperature=0, max_new_tokens=24),
                 False, out=buf, color=False)
    return buf.getvalue()


@pytest.mark.slow
def test_spoken_question_from_a_wav_gets_the_chat_reply(trained, corpus, tmp_path, capsys):
    """'hey mind, what is ...' from a WAV, a question without the wake word (ignored), an answer."""
    wav = write_wav(tmp_path / "q.wav", np.concatenate([noisy("what is the capital of france"),
                                                        noisy("hey mind, " + QUESTION, "en-gb-x-rp", 150)]))
    argv = ["voice", str(trained), "--input", str(wav), "--lm", str(corpus), "--temperature", "0",
            "--max-new-tokens", "24", "--device", "cpu", "--dtype", "fp32", "--verbose"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    reply = greedy_reply(trained, "What is 12 plus 30?")
    assert reply.strip() == ANSWER  # what it was taught, for the question it was asked aloud
    assert out == "you> What is 12 plus 30?\nminimind> " + reply  # the same chat path as `minimind chat`
    assert err.count("(no wake word: ignored 'what is the capital of") == 1


@pytest.mark.slow
def test_raw_pcm_on_stdin_without_wake_word(trained, corpus):
    pcm = noisy(QUESTION).astype("<i2").tobytes()
    r = subprocess.run([sys.executable, "-m", "minimind.cli", "voice", str(trained), "--input", "-", "--no-wake-word",
                        "--lm", str(corpus), "--temperature", "0", "--max-new-tokens", "8", "--device", "cpu"],
                       input=pcm, capture_output=True, timeout=300, env={**os.environ})
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode().splitlines()
    assert out[0] == "you> What is 12 plus 30?" and out[1].startswith("minimind> ")


def test_push_to_talk_answers_one_utterance_per_enter(domain, monkeypatch):
    """Each Enter starts listening; the first question ends it; Ctrl-D (EOF) stops."""
    from minimind.voice.audio import chunks
    from minimind.voice.cli import push_to_talk
    from minimind.voice.listen import Listener

    class FakeMic:  # what the microphone would deliver: two questions, a pause, then more audio
        def __init__(self, audio):
            self.it, self.discarded, self.closed = chunks(audio, 1600), 0, False

        def __iter__(self):
            return self.it

        def discard(self):
            self.discarded += 1

        def close(self):
            self.closed = True

    audio = np.concatenate([noisy(QUESTION), noisy("how many legs does a spider have?")])
    mic, enters, asked = FakeMic(audio), iter(["", ""]), []
    def enter(prompt=""):
        try:
            return next(enters)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", enter)
    listener = Listener(need_wake=False)

    def handle(h):
        event, words = listener.hear(h)
        if event == "question":
            asked.append(words)
        return event

    push_to_talk(mic, domain, handle)
    domain.flush()
    assert asked == ["what is twelve plus thirty", "how many legs does a spider have"]
    assert mic.discarded == 2 and mic.closed
