"""`minimind data synth | prepare` and `minimind tokenizer train`: the corpus and the tokens."""

from __future__ import annotations


def cmd_tokenizer_train(args):
    from ..tokenizer import train_tokenizer

    tok = train_tokenizer(args.data, args.out, vocab_size=args.vocab_size, max_docs=args.max_docs,
                          progress=not args.no_progress)
    print(f"tokenizer with {tok.vocab_size} tokens saved to {args.out}")


def cmd_data_synth(args):
    from .synth import synth_corpus

    files = synth_corpus(args.out, seed=args.seed, size=args.size, progress=not args.no_progress)
    for name, path in files.items():
        print(f"{name:<28} {path}")


def cmd_data_prepare(args):
    from .prepare import prepare

    info = prepare(args.input, args.tokenizer, args.out, kind=args.kind, max_seq_len=args.max_seq_len,
                   on_bad_record=args.on_bad_record, progress=not args.no_progress)
    state = "up to date" if info.up_to_date else "written"
    print(f"{info.out_dir}: {info.kind}, {info.n_records} records, {info.n_tokens} tokens, "
          f"{info.skipped} skipped ({state})")


def add_commands(sub) -> None:
    from ..cli import command_group

    tk = command_group(sub, "tokenizer", "train a byte-level BPE tokenizer")
    s = tk.add_parser("train", help="train from JSONL files (text, conversations or DPO records)")
    s.add_argument("--data", nargs="+", required=True, help="JSONL file(s)")
    s.add_argument("--out", required=True, help="output directory (tokenizer.json, tokenizer_config.json)")
    s.add_argument("--vocab-size", type=int, default=6400)
    s.add_argument("--max-docs", type=int, default=None, help="use at most this many records")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_tokenizer_train)

    dt = command_group(sub, "data", "built-in corpus and data preparation")
    s = dt.add_parser("synth", help="write the built-in bilingual corpus (all stages + held-out eval)")
    s.add_argument("--out", default="data/builtin")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=float, default=1.0, help="size multiplier (1.0 ~ a few MB of text)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_synth)
    s = dt.add_parser("prepare", help="validate and tokenize a JSONL file once into memory-mapped token files")
    s.add_argument("input", help="JSONL file (pretrain text, conversations or DPO pairs)")
    s.add_argument("--tokenizer", required=True, help="tokenizer or checkpoint directory")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--kind", choices=["pretrain", "sft", "dpo"], help="default: detected from the first record")
    s.add_argument("--max-seq-len", type=int, default=None, help="cut conversations to this many tokens")
    s.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_prepare)
