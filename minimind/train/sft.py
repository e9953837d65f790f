"""Supervised fine-tuning (SFT) objective: learn to produce the assistant's turns.

A conversation is rendered with the chat template into tokens x_1..x_T with a mask m_t = 1 on the
tokens the assistant produces (its think block, content, tool calls and closing <|im_end|>):

    L(theta) = - sum_t m_{t+1} w_{t+1} log p_theta(x_{t+1} | x_{<=t})  /  sum_t m_{t+1} w_{t+1}

(Ouyang et al. 2022, the SFT stage). w_t = 1 except, for reasoning distillation
(`minimind sft --reasoning`), w_t = think_weight on the <think> / </think> tag tokens, so the
model firmly learns to open and close its thinking (the MiniMind reasoning recipe).
Loss-masking is done by the loader (labels = -100 where m = 0); this file only adds the weights.
"""

from __future__ import annotations

import torch

from .pretrain import LanguageModeling


class SupervisedFineTuning(LanguageModeling):
    name = "sft"

    def __init__(self, weighted_ids: list[int] | None = None, weight: float = 1.0):
        self.weighted_ids = torch.tensor(weighted_ids or [], dtype=torch.long)
        self.weight = float(weight)

    def to(self, device):
        self.weighted_ids = self.weighted_ids.to(device)
        return self

    def loss(self, model, batch):
        if self.weight != 1.0 and self.weighted_ids.numel():
            special = torch.isin(batch["labels"], self.weighted_ids)
            batch = {**batch, "weights": 1.0 + (self.weight - 1.0) * special.float()}
        return super().loss(model, batch)
