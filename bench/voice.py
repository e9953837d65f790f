"""Voice front end on synthetic speech: wake-word detection, word error rate, latency.

    python bench/voice.py [--size 1.0] [--questions 24] [--latency 6]

1. `minimind data synth --size SIZE` (the demo's corpus); its held-out English questions spoken by
   espeak-ng (6 voices x 3 speeds), with and without "hey mind, " before them, 30 dB SNR.
2. pocketsphinx with the domain language model built from the corpus's training questions, and with
   the general English model + keyphrase spotter: detection, false wakes, WER, real-time factor.
3. Latency, end of speech -> first reply token: the audio is fed at real-time pace (as a microphone
   delivers it) through the same pieces `minimind voice` uses, to a nano-preset checkpoint (random
   weights: the prefill costs what a trained one's does), in each of --dtypes. Split into the
   endpointer's wait (its silence window), the recogniser's final search, and the chat's first
   visible text (at most 4 tokens).

Writes bench/voice.json; prints the tables last. Needs espeak-ng and the voice extra.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.peak import print_table, write_json  # noqa: E402
from minimind.runtime import machine_info  # noqa: E402
from minimind.voice.audio import RATE, chunks  # noqa: E402
from minimind.voice.evaluate import SPEEDS, VOICES, heldout_questions, make_set, score  # noqa: E402
from minimind.voice.sphinx import SphinxBackend  # noqa: E402
from minimind.voice.text import spoken, wer  # noqa: E402


def accuracy(data: Path, n_questions: int, snrs: list[float]) -> tuple[list[dict], list[dict]]:
    questions = heldout_questions(data, n_questions)
    domain, general = SphinxBackend("hey mind", lm=data), SphinxBackend("hey mind")
    runs = [("sphinx + domain LM (--lm)", domain, 30.0), ("sphinx general LM + keyphrase spotter", general, 30.0)]
    runs += [("sphinx + domain LM (--lm)", domain, snr) for snr in snrs if snr != 30.0]
    rows, per_voice = [], []
    for name, backend, snr in runs:
        r = score(backend, make_set(questions, snr_db=snr))
        rows.append({"recogniser": name, "SNR dB": snr, "wake utts": r["n_wake"], "detected": r["detection"],
                     "plain utts": r["n_plain"], "false wakes": r["false_wake"], "WER": r["wer"],
                     "x real time": r["real_time_factor"]})
        if snr != 30.0:
            continue
        for key in VOICES + SPEEDS:
            sel = [x for x in r["rows"] if key in (x["voice"], x["wpm"])]
            per_voice.append({"recogniser": name.split(" (")[0], "voice/wpm": key,
                              "WER": wer([spoken(x["question"]) for x in sel], [x["heard"] for x in sel])})
    return rows, per_voice


def tiny_checkpoint(data: Path, out: Path) -> Path:
    import torch

    from minimind.checkpoint import save_checkpoint
    from minimind.config import get_preset
    from minimind.model import MiniMindForCausalLM
    from minimind.tokenizer import Tokenizer, train_tokenizer

    train_tokenizer([data / "sft.jsonl"], out / "tok", vocab_size=6400, progress=False)
    tok = Tokenizer.load(out / "tok")
    torch.manual_seed(0)
    cfg = get_preset("nano", vocab_size=tok.vocab_size)
    return save_checkpoint(out / "ckpt", MiniMindForCausalLM(cfg), tok)


def latency(data: Path, n: int, ckpt: Path, dtype: str) -> list[dict]:
    from minimind.cli import build_parser
    from minimind.voice.cli import Conversation
    from minimind.voice.listen import Listener

    args = build_parser().parse_args(["voice", str(ckpt), "--max-new-tokens", "4", "--temperature", "0",
                                      "--dtype", dtype])
    convo = Conversation(args)
    backend = SphinxBackend("hey mind", lm=data)
    rows = []
    for s in [s for s in make_set(heldout_questions(data, n), seed=1) if s.wake]:
        listener, t0, fed = Listener(), time.perf_counter(), 0
        timing = {}
        for c in list(chunks(s.audio, 1600)) + [None]:
            if c is not None:
                fed += len(c)
                time.sleep(max(0.0, t0 + fed / RATE - time.perf_counter()))  # as a microphone delivers it
            t_in = time.perf_counter()
            for h in (backend.accept(c) if c is not None else backend.flush()):
                if listener.hear(h)[0] == "question" and not timing:
                    from minimind.voice.text import written

                    t_heard = time.perf_counter()
                    _, first = convo.reply(written(h.words), out=io.StringIO())
                    spoken_end = t0 + s.speech_end
                    timing = {"endpoint wait": t_in - spoken_end, "final search": t_heard - t_in,
                              "first token": first - t_heard, "total": first - spoken_end}
        if timing:
            rows.append({"dtype": dtype, "voice": s.voice, "wpm": s.wpm, **timing})
    if rows:
        rows.append({"dtype": dtype, "voice": "median", **{k: float(np.median([r[k] for r in rows])) for k in (
            "endpoint wait", "final search", "first token", "total")}})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=float, default=1.0, help="corpus size (1.0: the demo's)")
    p.add_argument("--questions", type=int, default=24, help="0 skips the accuracy tables")
    p.add_argument("--latency", type=int, default=6, help="utterances timed at real-time pace (0: none)")
    p.add_argument("--dtypes", nargs="*", default=["auto", "fp32"], help="chat model dtypes timed")
    p.add_argument("--snr", type=float, nargs="*", default=[30.0, 20.0, 40.0, float("inf")],
                   help="signal-to-noise ratios (dB) for the domain LM rows; inf = digital silence")
    args = p.parse_args()
    from minimind.data.synth import synth_corpus

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        synth_corpus(data, seed=0, size=args.size, progress=False)
        acc, per_voice = accuracy(data, args.questions, args.snr) if args.questions else ([], [])
        ckpt = tiny_checkpoint(data, Path(tmp)) if args.latency else None
        lat = [r for dt in args.dtypes if args.latency for r in latency(data, args.latency, ckpt, dt)]
    info = {**machine_info(), "load average (1 min) at end": round(__import__("os").getloadavg()[0], 1)}
    write_json("voice", {"machine": info, "size": args.size, "accuracy": acc, "per_voice": per_voice, "latency": lat})
    print(f"machine: {info}")
    if per_voice:
        print_table(per_voice, ["recogniser", "voice/wpm", "WER"])
    if lat:
        print_table(lat, ["dtype", "voice", "wpm", "endpoint wait", "final search", "first token", "total"])
    if acc:
        print_table(acc, ["recogniser", "SNR dB", "wake utts", "detected", "plain utts", "false wakes", "WER", "x real time"])


if __name__ == "__main__":
    main()
