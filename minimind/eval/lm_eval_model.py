"""minimind checkpoints as a native lm-eval model: no export needed.

    python -m minimind.eval.lm_eval_model --model minimind --model_args checkpoint=runs/demo/sft \\
        --tasks arc_easy,piqa --batch_size 16

runs EleutherAI's lm-evaluation-harness CLI with this module imported, which registers the model
name "minimind" (lm-eval finds models only among its own modules or ones already imported). From
Python: `lm_eval.simple_evaluate(model=MiniMindLM(checkpoint=...), tasks=[...])`.

The three request types map onto minimind's own code:
    loglikelihood          loglik.score_rows over (context, continuation) token rows, split as
                           lm-eval splits them (its TemplateLM._encode_pair)
    loglikelihood_rolling  the whole text after end-of-text, in disjoint windows of max_length
                           (ppl.windows), as lm-eval's rolling windows
    generate_until         the generation engine, greedy unless the task asks to sample

model_args: checkpoint (or pretrained), device (auto), dtype (auto | bf16 | fp32), max_length
(default: the model's positions).
"""

from __future__ import annotations

import sys

import torch
from tqdm.auto import tqdm

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError as e:  # an optional dependency: say which package to install
    raise ImportError("minimind's lm-eval model needs lm-eval: pip install \"lm-eval[hf]\" "
                      "(or pip install -e \".[eval]\")") from e

from .loglik import ScoringModel, continuation_row, load_scoring_model, score_rows
from .ppl import windows


@register_model("minimind")
class MiniMindLM(TemplateLM):
    def __init__(self, checkpoint: str | None = None, pretrained: str | None = None, device: str | None = None,
                 dtype: str = "auto", batch_size: int | str = 16, max_length: int | None = None, **_ignored):
        super().__init__()
        path = checkpoint or pretrained
        if not path:
            raise ValueError("model_args needs checkpoint=PATH (a minimind checkpoint or run directory)")
        if device and device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's CLI passes --device cuda unless told otherwise; its hf model falls back too
            print(f"minimind: --device {device} is not available here; using auto", file=sys.stderr)
            device = None
        self.sm: ScoringModel = load_scoring_model(path, device or "auto", dtype)
        self.tokenizer = self.sm.tok
        self.batch_size = int(str(batch_size).split(":")[0]) if str(batch_size) != "auto" else 16
        self._max_length = int(max_length) if max_length else self.sm.max_positions

    @property
    def eot_token_id(self) -> int:
        return self.sm.tok.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.sm.tok.encode(string)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        rows = [continuation_row(ctx, cont, self.max_length) for _, ctx, cont in requests]
        scores = score_rows(self.sm, rows, self.batch_size, progress=not disable_tqdm, desc="loglikelihood")
        out = []
        for (pair, _, _), s in zip(requests, scores):
            out.append((s.total, s.greedy))
            self.cache_hook.add_partial("loglikelihood", pair, (s.total, s.greedy))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood_rolling"):
            (text,) = req.args
            ids = [self.eot_token_id] + self.tok_encode(text)
            rows = windows(ids, [False] + [True] * (len(ids) - 1), self.max_length, self.max_length)
            total = sum(s.total for s in score_rows(self.sm, rows, self.batch_size))
            out.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from ..infer.engine import Engine, SamplingParams

        engine = Engine(self.sm.model, self.sm.tok)
        out = []
        for req in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, kw = req.args
            until = kw.get("until") or []
            params = SamplingParams(temperature=float(kw.get("temperature", 0.0)) if kw.get("do_sample") else 0.0,
                                    max_new_tokens=int(kw.get("max_gen_toks", 256)),
                                    stop=[until] if isinstance(until, str) else list(until))
            prompt = self.tok_encode(context)[-(self.max_length - params.max_new_tokens):]
            text = engine.generate([prompt], params)[0].text
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, kw), text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line, with the "minimind" model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval"] + list(sys.argv[1:] if argv is None else argv)
    cli_evaluate()


if __name__ == "__main__":
    main()
