"""Reward models from other projects, through transformers.

Two kinds of folders are supported:

- `AutoModelForSequenceClassification` models (one label): the conversation is rendered with the
  folder's own chat template (`tokenizer.apply_chat_template`), and the reward is the logit at the
  last token - transformers' pooling for sequence classification. `minimind export hf` writes our
  reward models in this form, so they work here too (tests/test_reward.py checks equality).
- Models with their own `get_score(tokenizer, messages)` method, such as InternLM2-Reward (the one
  the public MiniMind RL scripts use). Their code ships inside the model folder, so loading it runs
  that code: pass `--trust-remote-code` only for folders you trust.

Rewards are squashed to (0, 1) with sigmoid((r - center) / scale) so that they mix with rule rewards
(`--reward-center`, `--reward-scale`; the defaults 0 and 1 keep the raw logit's sign).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import UserError


class ExternalReward:
    name = "external_rm"

    def __init__(self, path, device="cpu", batch_size: int = 8, trust_remote_code: bool = False,
                 center: float = 0.0, scale: float = 1.0):
        try:
            from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
        except ImportError:
            raise UserError("--external-reward-model needs transformers: pip install transformers") from None
        path = Path(path)
        if not (path / "config.json").is_file():
            raise UserError(f"--external-reward-model {path}: no config.json; pass a transformers model folder")
        self.tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        if self.tok.chat_template is None:
            raise UserError(f"--external-reward-model {path}: the tokenizer has no chat template")
        kw = {"trust_remote_code": trust_remote_code, "dtype": torch.float32}
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
        self.device, self.batch_size, self.center, self.scale = torch.device(device), batch_size, center, scale

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
            out += logits[:, 0].float().tolist()
        return out

    def score(self, records: list[dict], replies: list[dict]) -> tuple[list[float], dict]:
        convs = [[{"role": m["role"], "content": m.get("content") or ""} for m in r["conversations"]]
                 + [{"role": "assistant", "content": y.get("content") or ""}] for r, y in zip(records, replies)]
        raw = self.raw_scores(convs)
        return [1.0 / (1.0 + math.exp(-(x - self.center) / self.scale)) for x in raw], {"ext_score": raw}
