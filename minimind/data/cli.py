"""`minimind data synth | prepare | show` and `minimind tokenizer train | show`: the corpus and the tokens."""

from __future__ import annotations


def cmd_tokenizer_train(args):
    from ..tokenizer import train_tokenizer

    tok = train_tokenizer(args.data, args.out, vocab_size=args.vocab_size, max_docs=args.max_docs,
                          progress=not args.no_progress)
    print(f"tokenizer with {tok.vocab_size} tokens saved to {args.out}")


def cmd_data_synth(args):
    from .synth import synth_corpus

    files = synth_corpus(args.out, seed=args.seed, size=args.size, progress=not args.no_progress, mix=args.mix)
    for name, path in files.items():
        print(f"{name:<28} {path}")


def cmd_data_tool_mix(args):
    from .tool_mix import tool_mix

    counts = tool_mix(args.corpus, args.out, conversations=args.conversations, replay=args.replay,
                      lookup_share=args.lookup_share, invented=args.invented, substituted=args.substituted,
                      clock=args.clock, seed=args.seed)
    total = sum(counts.values())
    parts = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "replayed")
    print(f"{args.out}: {total} conversations: {total - counts['replayed']} new tool conversations ({parts}), "
          f"{counts['replayed']} replayed from {args.corpus}/sft.jsonl")


def cmd_data_show(args):
    from .show import cmd_data_show as show

    show(args)


def cmd_tokenizer_show(args):
    from .show import cmd_tokenizer_show as show

    show(args)


def cmd_data_prepare(args):
    from .prepare import prepare

    info = prepare(args.input, args.tokenizer, args.out, kind=args.kind, max_seq_len=args.max_seq_len,
                   on_bad_record=args.on_bad_record, progress=not args.no_progress)
    state = "up to date" if info.up_to_date else "written"
    print(f"{info.out_dir}: {info.kind}, {info.n_records} records, {info.n_tokens} tokens, "
          f"{info.skipped} skipped ({state})")


def add_commands(sub) -> None:
    from ..cli import command_group, positive_int

    tk = command_group(sub, "tokenizer", "train a byte-level BPE tokenizer")
    s = tk.add_parser("train", help="train from JSONL files (text, conversations or DPO records)")
    s.add_argument("--data", nargs="+", required=True, help="JSONL file(s)")
    s.add_argument("--out", required=True, help="output directory (tokenizer.json, tokenizer_config.json)")
    s.add_argument("--vocab-size", type=int, default=6400)
    s.add_argument("--max-docs", type=positive_int, default=None, help="use at most this many records")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_tokenizer_train)
    s = tk.add_parser("show", help="how a text is tokenized: each token's id, text and bytes",
                      description="Tokenize TEXT and list each token: id, text (spaces as ␣) and UTF-8 bytes. "
                                  "A token that holds part of a character (byte-level BPE splits rare Chinese "
                                  "characters) is shown as its bytes and the character it belongs to.")
    s.add_argument("text", nargs="+", help="the text (several words are joined with spaces)")
    s.add_argument("--tokenizer", help="tokenizer, checkpoint or run directory (default runs/demo/tokenizer)")
    s.add_argument("--json", action="store_true", help="one JSON list of tokens instead of the table")
    s.set_defaults(func=cmd_tokenizer_show)

    dt = command_group(sub, "data", "built-in corpus and data preparation")
    s = dt.add_parser("synth", help="write the built-in bilingual corpus (all stages + held-out eval)")
    s.add_argument("--out", default="data/builtin")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=float, default=1.0, help="size multiplier (1.0 ~ a few MB of text)")
    s.add_argument("--mix", default="default",
                   help="document and conversation mix: default, or demo (fewer subjects stated more often, "
                        "sums worked column by column: what `minimind demo` trains on)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_synth)
    s = dt.add_parser("tool-mix", help="write a tool-heavy fine-tuning set beside a built-in corpus",
                      description="New tool conversations (call -> result -> an answer that states the result), "
                      "drawn with the corpus's held-out split, plus replayed conversations of its sft.jsonl; "
                      "for `minimind sft --init <an SFT model> --max-seq-len 1024`. See docs/tools.md.")
    s.add_argument("--corpus", default="data/builtin",
                   help="a directory written by `minimind data synth` (its seed fixes the held-out split)")
    s.add_argument("--out", required=True, help="output JSONL")
    s.add_argument("--conversations", type=int, default=12000, help="new tool conversations (default 12000)")
    s.add_argument("--replay", type=int, default=5000,
                   help="conversations of the corpus's sft.jsonl mixed in, so the rest is not forgotten (default 5000)")
    s.add_argument("--lookup-share", type=float, default=0.5,
                   help="share of the new conversations that need lookup (default 0.5; the rest by the corpus's tool weights)")
    s.add_argument("--invented", type=float, default=0.5,
                   help="share of lookups about an invented subject that only the tool's result answers (default 0.5)")
    s.add_argument("--substituted", type=float, default=0.25,
                   help="share of the other lookups whose result disagrees with the corpus, so the reply must "
                        "follow the tool (default 0.25)")
    s.add_argument("--clock", type=float, default=0.7,
                   help="share of current_time/weather tasks at a random instant of the mock clock (default 0.7)")
    s.add_argument("--seed", type=int, default=0, help="seed of the draws (the split comes from the corpus)")
    s.set_defaults(func=cmd_data_tool_mix)

    s = dt.add_parser("prepare", help="validate and tokenize a JSONL file once into memory-mapped token files")
    s.add_argument("input", help="JSONL file (pretrain text, conversations or DPO pairs)")
    s.add_argument("--tokenizer", required=True, help="tokenizer or checkpoint directory")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--kind", choices=["pretrain", "sft", "dpo"], help="default: detected from the first record")
    s.add_argument("--max-seq-len", type=positive_int, default=None, help="cut conversations to this many tokens")
    s.add_argument("--on-bad-record", default="error", choices=["error", "skip"])
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_data_prepare)
    s = dt.add_parser("show", help="one record as the model sees it, with the trained tokens marked",
                      description="Render one record (the chat template for conversations) and mark the "
                                  "tokens training learns to produce - green in a terminal, between [[ and ]] "
                                  "otherwise - with token counts. The mask is the one `data prepare` stores "
                                  "and SFT trains on.")
    s.add_argument("path", help="a JSONL file, or a directory written by `data prepare`")
    s.add_argument("--line", type=int, default=1,
                   help="line of the JSONL file, or record of a prepared directory, from 1 (default 1); a "
                        "prepared directory leaves out empty and skipped lines")
    s.add_argument("--tokenizer", help="tokenizer, checkpoint or run directory (default runs/demo/tokenizer)")
    s.add_argument("--max-seq-len", type=positive_int, default=None,
                   help="show where training with this --max-seq-len cuts the record")
    s.add_argument("--tokens", action="store_true", help="one line per token (position, id, trained, text)")
    s.add_argument("--color", choices=["auto", "always", "never"], default="auto",
                   help="colour the trained tokens (auto: when printing to a terminal), else [[brackets]]")
    s.set_defaults(func=cmd_data_show)
