"""Run `minimind grpo` with a sampler and a reward that depend only on the prompt, never on the rank or
the seeds, so a 2-process run and a 1-process run see the very same responses and rewards, and with
plain SGD, so the weights after one step are w - lr * g: comparing them compares the gradients (Adam's
g / (|g| + eps) would magnify float-order noise in near-zero gradients). Used by tests/test_rl_ddp.py
(under torchrun and alone): `python -m tests.rl_ddp_worker GRPO-ARGS...`."""

import sys
import zlib

import torch

from minimind.train import engine
from minimind.train.rl import train as rl_train


def content_sampler(model, tok):
    def generate(prompts, temperature, max_new_tokens, seeds, suppress_ids):
        outs, copies = [], {}
        for p in prompts:
            key = zlib.crc32(str(p).encode())
            copies[key] = copies.get(key, -1) + 1  # the k-th sample of this prompt in the group
            g = torch.Generator().manual_seed(key * 16 + copies[key])
            n = int(torch.randint(2, max_new_tokens + 1, (1,), generator=g))
            tokens = torch.randint(10, tok.vocab_size, (n,), generator=g).tolist()
            outs.append((tokens + [tok.eos_id], "stop"))
        return outs

    return generate


class TokenReward:
    """Varies within a group: the share of even ids in the response."""

    name = "even"

    def needs_gt(self):
        return False

    def score(self, records, replies):
        vals = [sum(ord(c) % 2 == 0 for c in y["content"]) / max(len(y["content"]), 1) for y in replies]
        return vals, {}


def sgd(model, cfg, device, extra=()):
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad] + list(extra), lr=cfg.lr)


if __name__ == "__main__":
    engine.build_optimizer = sgd
    rl_train.engine_sampler = content_sampler
    rl_train.build_reward = lambda rc, think, device: TokenReward()
    from minimind.cli import main

    sys.exit(main(["grpo", *sys.argv[1:]]))
