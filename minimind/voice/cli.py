"""`minimind voice CKPT`: talk to a checkpoint.

audio -> backend (endpointing + recognition + wake word) -> Listener (which utterances are
questions) -> text.written -> the chat path of `minimind chat` (streaming, thinking, tool calls)
-> printed, and spoken with --speak.
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import UserError
from .audio import RATE, Microphone, chunks, read_wav, stdin_chunks
from .listen import Listener
from .text import written

CHUNK = 1600  # 0.1 s of audio per read


class Conversation:
    """The chat model behind the microphone: the one place voice calls the generation engine."""

    def __init__(self, args):
        from ..infer.chat import sampling_from_args
        from ..infer.generate import load_engine

        self.params = sampling_from_args(args)
        self.gen = load_engine(args.checkpoint, args.device, args.dtype, args.quantize,
                               compile=getattr(args, "compile", "auto"))  # --compile comes with the sampling flags
        self.think, self.system, self.keep = args.think == "on", args.system, not args.no_history
        self.history: list[dict] = []

    def reply(self, text: str, out=None) -> tuple[dict, float | None]:
        """Stream the answer to `text` -> (parsed reply, wall time of its first printed character)."""
        from ..infer.chat import stream_reply

        out = out or sys.stdout
        if not self.keep:
            self.history = []
        self.history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        out.write("minimind> ")
        out.flush()
        timed = FirstWrite(out)
        reply = stream_reply(self.gen, messages, self.params, self.think, out=timed,
                             color=getattr(out, "isatty", lambda: False)())
        self.history.append({"role": "assistant", "content": reply["content"],
                             "reasoning_content": reply["reasoning_content"] or None})
        return reply, timed.first


class FirstWrite:
    """A text stream that notes when the first non-empty text went through it."""

    def __init__(self, out):
        self.out, self.first = out, None

    def write(self, s: str) -> int:
        if s and self.first is None:
            self.first = time.perf_counter()
        return self.out.write(s)

    def flush(self) -> None:
        self.out.flush()


def make_backend(args):
    wake = None if args.no_wake_word or args.push_to_talk else args.wake_word
    if args.backend == "sphinx":
        from .sphinx import SphinxBackend

        return SphinxBackend(wake, args.wake_threshold, lm=args.lm, model_dir=args.sphinx_model,
                             dictionary=args.sphinx_dict, vad_window=args.vad_window or 0.3)
    from .sherpa import SherpaBackend

    return SherpaBackend(wake, args.wake_threshold, kws_model=args.kws_model, asr_model=args.asr_model,
                         vad_model=args.vad_model, sense_voice=args.sense_voice, threads=args.threads,
                         trailing_silence=args.vad_window or 0.8, kws_keywords=args.kws_keywords)


def check_flags(args) -> None:
    if args.push_to_talk and args.input is not None:
        raise UserError("--push-to-talk needs the microphone; with --input use --no-wake-word")
    if args.wake_word is not None and not args.wake_word.strip():
        raise UserError("--wake-word is empty; use --no-wake-word to answer every utterance")
    if args.vad_window is not None and not 0.2 <= args.vad_window <= 5:  # pocketsphinx needs >= 0.2
        raise UserError(f"--vad-window must be between 0.2 and 5 seconds, got {args.vad_window}")
    if args.listen_timeout <= 0:
        raise UserError(f"--listen-timeout must be > 0 seconds, got {args.listen_timeout}")
    sherpa_only = (args.kws_model, args.kws_keywords, args.asr_model, args.vad_model, args.sense_voice)
    if args.backend == "sphinx" and any(sherpa_only):
        raise UserError("--kws-model/--kws-keywords/--asr-model/--vad-model/--sense-voice are sherpa-onnx "
                        "flags: add --backend sherpa")
    if args.speak:
        from .tts import espeak

        espeak()


def audio_source(args):
    """-> (iterable of int16 chunks, microphone or None); file problems surface here, before loading."""
    if args.input == "-":
        return stdin_chunks(args.sample_rate, CHUNK), None
    if args.input is not None:
        return chunks(read_wav(args.input), CHUNK), None
    mic = Microphone(args.sample_rate, CHUNK)
    return mic, mic


def status(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_voice(args) -> None:
    check_flags(args)
    source, mic = audio_source(args)
    backend = make_backend(args)
    convo = Conversation(args)
    listener = Listener(need_wake=backend.wake_word is not None, timeout=args.listen_timeout)
    t0 = time.perf_counter()

    def handle(h) -> str:
        event, words = listener.hear(h)
        if event == "wake":
            status(f"(awake: ask within {args.listen_timeout:g} s)")
        elif event == "ignored" and args.verbose:
            status(f"(no wake word: ignored {h.words!r})")
        elif event == "question":
            text = written(words)
            print(f"you> {text}", flush=True)
            reply, first = convo.reply(text)
            if args.verbose and first is not None and args.realtime:
                status(f"(end of speech -> first reply token: {first - (t0 + h.end):.2f} s)")
            if args.speak:
                from .tts import speak

                speak(reply["content"], args.voice)
            if mic is not None:
                mic.discard()  # what it recorded while we answered is our own voice
        return event

    if args.push_to_talk:
        return push_to_talk(mic, backend, handle)
    status(f"({backend.summary})")
    status("(listening" + (f" for {backend.wake_word!r}" if backend.wake_word else "") + "; Ctrl-C stops)")
    fed = 0
    try:
        for chunk in source:
            fed += len(chunk)
            if args.realtime:  # a file read as a microphone delivers it: a chunk once it is complete
                time.sleep(max(0.0, t0 + fed / RATE - time.perf_counter()))
            for h in backend.accept(chunk):
                handle(h)
        for h in backend.flush():
            handle(h)
    finally:
        if mic is not None:
            mic.close()


def push_to_talk(mic, backend, handle) -> None:
    """Enter starts one utterance; the endpointer ends it; the answer; again. Ctrl-D stops."""
    try:
        while True:
            try:
                input("(press Enter, then speak)")
            except EOFError:
                return
            mic.discard()
            for chunk in mic:
                if any(handle(h) == "question" for h in backend.accept(chunk)):
                    break
    finally:
        mic.close()


# ----------------------------------------------------------------------------- command

def add_commands(sub) -> None:
    from ..infer.chat import add_sampling_args

    s = sub.add_parser("voice", help="talk to a checkpoint: wake word, speech recognition, spoken replies",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    g = s.add_argument_group("audio in")
    g.add_argument("--input", default=None, metavar="FILE.wav|-",
                   help="a 16 kHz 16-bit WAV file, or - for raw 16-bit little-endian mono PCM on stdin "
                        "(default: the microphone, through PortAudio)")
    g.add_argument("--sample-rate", type=int, default=RATE,
                   help=f"sample rate of raw PCM on stdin and of the microphone (must be {RATE})")
    g.add_argument("--realtime", action="store_true",
                   help="read --input at the pace a microphone would deliver it (for latency measurements)")
    g = s.add_argument_group("wake word")
    g.add_argument("--wake-word", default="hey mind", help="phrase that starts a question (default 'hey mind')")
    g.add_argument("--wake-threshold", type=float, default=None,
                   help="sphinx: log10 likelihood ratio the wake phrase must win by (lower = more sensitive; "
                        "default 0 with --lm, -40 without); sherpa: keyword probability threshold in (0, 1) "
                        "(higher = stricter; default 0.25)")
    g.add_argument("--no-wake-word", action="store_true", help="answer every utterance (hands-free, no wake word)")
    g.add_argument("--push-to-talk", action="store_true",
                   help="press Enter before each question (microphone); no wake word")
    g.add_argument("--listen-timeout", type=float, default=8.0,
                   help="seconds after a bare wake word to wait for the question (default 8)")
    g = s.add_argument_group("recogniser")
    g.add_argument("--backend", choices=["sphinx", "sherpa"], default="sphinx",
                   help="sphinx: pocketsphinx, offline out of the box; sherpa: sherpa-onnx neural models "
                        "(directories given below)")
    g.add_argument("--lm", default=None, metavar="PATH",
                   help="sphinx: build a domain language model from the questions in PATH (a `minimind data "
                        "synth` directory, conversation JSONL, or text with one sentence a line); "
                        "strongly recommended: see docs/voice.md")
    g.add_argument("--vad-window", type=float, default=None,
                   help="seconds of silence that end an utterance (default: sphinx 0.3, sherpa 0.8; shorter "
                        "answers sooner but cuts questions at pauses)")
    g.add_argument("--sphinx-model", default=None, metavar="DIR", help="sphinx: another acoustic model directory")
    g.add_argument("--sphinx-dict", default=None, metavar="FILE", help="sphinx: another pronunciation dictionary")
    g.add_argument("--kws-model", default=None, metavar="DIR",
                   help="sherpa: keyword-spotting zipformer (tokens.txt, encoder/decoder/joiner .onnx)")
    g.add_argument("--kws-keywords", default=None, metavar="FILE",
                   help="sherpa: a keywords file from `sherpa-onnx-cli text2token` instead of spelling --wake-word")
    g.add_argument("--asr-model", default=None, metavar="DIR",
                   help="sherpa: streaming zipformer transducer with endpoint detection")
    g.add_argument("--vad-model", default=None, metavar="FILE", help="sherpa: silero_vad.onnx (with --sense-voice)")
    g.add_argument("--sense-voice", default=None, metavar="DIR", help="sherpa: SenseVoice model (model.onnx, tokens.txt)")
    g.add_argument("--threads", type=int, default=2, help="sherpa: inference threads (default 2)")
    g = s.add_argument_group("speech out")
    g.add_argument("--speak", action="store_true", help="read each reply aloud with espeak-ng")
    g.add_argument("--voice", default="en-us", help="espeak-ng voice for --speak (default en-us; e.g. cmn for Mandarin)")
    s.add_argument("--system", default=None, help="system prompt")
    s.add_argument("--no-history", action="store_true", help="each question starts a new conversation")
    s.add_argument("--verbose", action="store_true", help="say what was ignored and how long each answer took")
    add_sampling_args(s)
    s.set_defaults(func=run_voice)


EPILOG = """examples:
  minimind voice runs/demo/sft --lm runs/demo/data              # microphone, say "hey mind, what is ..."
  minimind voice runs/demo/sft --lm runs/demo/data --input q.wav
  arecord -f S16_LE -r 16000 -c 1 | minimind voice runs/demo/sft --input - --no-wake-word
  minimind voice runs/demo/sft --backend sherpa --kws-model KWS_DIR --asr-model ASR_DIR --speak
setup of both backends, model downloads and measured accuracy: docs/voice.md"""
