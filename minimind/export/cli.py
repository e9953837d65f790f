"""`minimind export hf|gguf|ollama` and `minimind import hf`.

transformers, gguf and numpy-heavy code are imported inside the handlers, so `minimind --help`
stays fast and works without the optional export dependencies.
"""

from __future__ import annotations


def cmd_export_hf(args):
    import json

    from .hf import export_hf

    out = export_hf(args.checkpoint, args.out, dtype=args.dtype)
    arch = json.loads((out / "config.json").read_text())["architectures"][0]
    print(f"wrote {out} ({arch}, {args.dtype}); load it with "
          f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})")


def cmd_export_gguf(args):
    from .gguf import export_gguf

    out = export_gguf(args.checkpoint, args.out, dtype=args.dtype)
    print(f"wrote {out} ({args.dtype}, {out.stat().st_size / 1e6:.1f} MB); run it with "
          f"llama-cli -m {out}")


def cmd_export_ollama(args):
    from .ollama import export_ollama

    modelfile = export_ollama(args.checkpoint, args.out, dtype=args.dtype,
                              temperature=args.temperature, top_p=args.top_p, system=args.system)
    print(f"wrote {modelfile.parent}/model.gguf and {modelfile}; then: "
          f"cd {modelfile.parent} && ollama create minimind -f Modelfile && ollama run minimind")


def cmd_import_hf(args):
    from .hf import import_hf

    out, notes = import_hf(args.source, args.out)
    for note in notes:
        print(f"note: {note}")
    print(f"wrote checkpoint {out}; try: minimind chat {out}")


def add_commands(sub) -> None:
    ex = sub.add_parser("export", help="export a checkpoint: Hugging Face transformers, GGUF, ollama")
    ex = ex.add_subparsers(dest="sub", metavar="FORMAT", required=True)

    s = ex.add_parser("hf", help="a transformers model folder (Llama / Qwen3 / Qwen2-MoE / Qwen3-MoE / "
                                 "Mixtral classes, no trust_remote_code)")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("out", help="output folder")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="weight type (default float32: exact)")
    s.set_defaults(func=cmd_export_hf)

    s = ex.add_parser("gguf", help="one GGUF file for llama.cpp")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("out", help="output file, e.g. model.gguf")
    s.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f16",
                   help="weight type (default f16; f32 is exact, q8_0 is 8-bit)")
    s.set_defaults(func=cmd_export_gguf)

    s = ex.add_parser("ollama", help="a GGUF file plus an ollama Modelfile (chat template, stop tokens)")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("out", help="output folder (model.gguf, Modelfile)")
    s.add_argument("--dtype", choices=["f32", "f16", "q8_0"], default="f16")
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-p", type=float, default=0.9)
    s.add_argument("--system", default=None, help="default system prompt")
    s.set_defaults(func=cmd_export_ollama)

    im = sub.add_parser("import", help="import a model from another format into a minimind checkpoint")
    im = im.add_subparsers(dest="sub", metavar="FORMAT", required=True)
    s = im.add_parser("hf", help="a transformers folder (llama, qwen3, qwen2_moe, qwen3_moe, mixtral) "
                                 "or an original MiniMind one (model_type minimind)")
    s.add_argument("source", help="folder with config.json, weights and tokenizer.json")
    s.add_argument("out", help="checkpoint directory to write")
    s.set_defaults(func=cmd_import_hf)
