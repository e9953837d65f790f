"""`minimind serve`: registers the command; the server (FastAPI, uvicorn) is imported only when it runs."""

from __future__ import annotations


def cmd_serve(args):
    from .server import serve

    serve(args)


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server with batching, and a web chat at /",
                       description="Serve a checkpoint over the OpenAI chat completions API "
                                   "(/v1/chat/completions, /v1/models) with continuous batching; "
                                   "open http://HOST:PORT/ for the web chat. Limits: request bodies "
                                   "(--max-body-mb, 413), reply length when max_tokens is omitted "
                                   "(--default-max-tokens), KV cache memory (--kv-memory-mb: requests "
                                   "wait until theirs fits), waiting requests (--max-queue, then 429).")
    s.add_argument("checkpoint", help="checkpoint directory (or a run directory)")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other address without "
                        "--api-key prints a warning)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    s.add_argument("--api-key", default=None,
                   help="require this key on every endpoint but GET /health: 'Authorization: Bearer KEY', "
                        "'X-API-Key: KEY', or HTTP Basic with KEY as the password (the browser asks for it)")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    s.add_argument("--dtype", default="auto", help="auto (bf16 where bf16 matmuls are fast), bf16, fp16, fp32")
    from .quant import add_quantize_arg

    add_quantize_arg(s)
    s.add_argument("--compile", choices=["auto", "on", "off"], default="on",
                   help="fused decode step: torch.compile on CPU (compiled and autotuned once at start: one to "
                        "a few minutes on 2 cores, faster when PyTorch's cache has it), CUDA graphs on GPU; "
                        "off = eager; auto = GPU only (default on)")
    s.add_argument("--max-batch", type=int, default=16, help="sequences decoded together (default 16)")
    s.add_argument("--kv-memory-mb", type=float, default=512,
                   help="KV cache budget in MiB (default 512); a request reserves prompt + max_tokens "
                        "positions and waits while they do not fit")
    s.add_argument("--max-queue", type=int, default=64,
                   help="requests allowed to wait for a free row or KV memory; more get HTTP 429 (default 64)")
    s.add_argument("--max-body-mb", type=float, default=4,
                   help="largest request body in MiB (default 4); larger ones get HTTP 413 unread")
    s.add_argument("--default-max-tokens", type=int, default=512,
                   help="reply length when a request gives no max_tokens (default 512, and never past the context)")
    s.add_argument("--model-name", default="minimind", help="the model id clients see (default minimind)")
    s.add_argument("--lora", default=None, help="apply this LoRA adapter directory")
    s.set_defaults(func=cmd_serve, varying_shapes=True)  # long-running, every request a new shape (runtime.pin_malloc_threshold)
