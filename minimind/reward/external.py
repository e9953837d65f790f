"""Reward models from other projects, through transformers.

Three kinds of folders are supported:

- `AutoModelForSequenceClassification` models (one label): the conversation is rendered with the
  folder's own chat template (`tokenizer.apply_chat_template`), and the reward is the logit at the
  last token - transformers' pooling for sequence classification. `minimind export hf` writes our
  reward models in this form, so they work here too (tests/test_reward.py checks equality).
- Models with their own `get_score(tokenizer, messages)` method, such as InternLM2-Reward (the one
  the public MiniMind RL scripts use). Their code ships inside the model folder, so loading it runs
  that code: pass `--trust-remote-code` only for folders you trust.

- A likelihood reward model exported by `minimind export hf` (`reward train --head likelihood`): a
  causal LM whose `reward.json` says kind "likelihood"; the reward is beta times the mean token
  log-prob of the last assistant message (after its `<|im_start|>assistant\n` header, through its
  `<|im_end|>`: the tokens our loss mask trains), as reward/model.py scores it.

Rewards are squashed to (0, 1) with sigmoid((r - center) / scale) so that they mix with rule rewards.
center comes from the folder's `reward.json` where there is one (our exports), else 0; scale is 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import UserError


class ExternalReward:
    name = "external_rm"

    def __init__(self, path, device="cpu", batch_size: int = 8, trust_remote_code: bool = False,
                 center: float | None = None, scale: float = 1.0):
        try:
            from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                                      AutoTokenizer)
        except ImportError:
            raise UserError("--external-reward-model needs transformers: pip install transformers") from None
        from .model import read_reward_meta

        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"--external-reward-model {path}: no config.json; pass a transformers model folder")
        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if self.tok.chat_template is None:
            raise UserError(f"--external-reward-model {path}: the tokenizer has no chat template")
        meta = read_reward_meta(path)
        center = meta.get("score_center", 0.0) if center is None else center
        self.device, self.batch_size, self.center, self.scale = torch.device(device), batch_size, center, scale
        kw = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
        self.beta = meta.get("beta") if meta.get("kind") == "likelihood" else None
        if self.beta is not None:
            self.model = AutoModelForCausalLM.from_pretrained(str(path), **kw).to(device).eval()
            return
        try:
            self.model = AutoModelForSequenceClassification.from_pretrained(str(path), **kw)
        except (ValueError, KeyError):
            if not trust_remote_code:
                raise UserError(f"--external-reward-model {path}: not a sequence-classification model; "
                                f"models with their own get_score() need --trust-remote-code") from None
            self.model = AutoModel.from_pretrained(str(path), **kw)
        if not hasattr(self.model, "get_score") and self.model.config.num_labels != 1:
            raise UserError(f"--external-reward-model {path}: expected one output label, the model has "
                            f"{self.model.config.num_labels}")
        self.model.to(device).eval()

    def needs_gt(self) -> bool:
        return False

    @torch.no_grad()
    def raw_scores(self, conversations: list[list[dict]]) -> list[float]:
        if hasattr(self.model, "get_score"):  # InternLM2-Reward style
            return [float(self.model.get_score(self.tok, c)) for c in conversations]
        out = []
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        for s in range(0, len(conversations), self.batch_size):
            texts = [self.tok.apply_chat_template(c, tokenize=False) for c in conversations[s:s + self.batch_size]]
            rows = [self.tok(t, add_special_tokens=False)["input_ids"] for t in texts]
            width = max(len(r) for r in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            attn = torch.zeros((len(rows), width), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r)], attn[i, :len(r)] = torch.tensor(r), 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=attn.to(self.device)).logits
            out += logits[:, 0].float().tolist() if self.beta is None else self._mean_reply_logp(rows, logits)
        return out

    def _mean_reply_logp(self, rows: list[list[int]], logits) -> list[float]:
        """beta * mean log p of each row's last assistant message: the tokens after its header
        through its <|im_end|> (the labels reward/model.py scores, by the same formula)."""
        from ..train.dpo import sequence_logps
        from ..train.pretrain import IGNORE
        from .model import last_reply_labels

        header = self.tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
        end_id = self.tok.convert_tokens_to_ids("<|im_end|>")
        labels = torch.full((len(rows), logits.shape[1] - 1), IGNORE, dtype=torch.long)
        for i, r in enumerate(rows):
            heads = [j for j in range(len(r) - len(header) + 1) if r[j:j + len(header)] == header]
            if not heads:
                raise UserError("--external-reward-model: its chat template does not write an "
                                "'<|im_start|>assistant' header, so the reply cannot be found; a likelihood "
                                "reward model needs the ChatML template `minimind export hf` writes")
            start = heads[-1] + len(header)
            stop = r.index(end_id, start) + 1 if end_id in r[start:] else len(r)
            reply = [int(start <= t < stop) for t in range(len(r))]
            labels[i, :len(r) - 1] = torch.tensor(last_reply_labels(r, reply))
        logp, n = sequence_logps(logits[:, :-1], labels.to(logits.device))
        return (self.beta * logp / n.clamp(min=1)).tolist()

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict]:
        convs = [[{"role": m["role"], "content": m.get("content") or ""} for m in r["conversations"]]
                 + [{"role": "assistant", "content": y.get("content") or ""}] for r, y in zip(records, replies)]
        raw = self.raw_scores(convs)
        return [1.0 / (1.0 + math.exp(-(x - self.center) / self.scale)) for x in raw], {"ext_score": raw}
