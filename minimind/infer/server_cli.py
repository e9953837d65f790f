"""`minimind serve`: registers the command; the server (FastAPI, uvicorn) is imported only when it runs."""

from __future__ import annotations


def cmd_serve(args):
    from .server import serve

    serve(args)


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server with batching, and a web chat at /",
                       description="Serve a checkpoint over the OpenAI chat completions API "
                                   "(/v1/chat/completions, /v1/models) with continuous batching; "
                                   "open http://HOST:PORT/ for the web chat.")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 requests")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    s.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16, fp16, fp32")
    from .quant import add_quantize_arg

    add_quantize_arg(s)
    s.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    s.add_argument("--model-name", default="minimind", help="the model id clients see (default minimind)")
    s.add_argument("--lora", default=None, help="apply this LoRA adapter directory")
    s.set_defaults(func=cmd_serve, varying_shapes=True)  # long-running, every request a new shape (runtime.pin_malloc_threshold)
