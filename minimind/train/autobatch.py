"""`--batch-size auto`: the largest micro-batch that fits the device, the step's rows kept.

An optimizer step trains on R rows (the command's default batch size x --grad-accum). With a
micro-batch of b rows and A = R / b accumulation steps the gradient is the same (engine.py: the
mean over the A micro-batches), so b only trades memory for speed. We take the largest divisor b
of R that fits:

GPU (CUDA): measured. One forward and backward of the model on b x copies rows of max_seq_len
random tokens (copies = 2 for DPO's chosen + rejected), peak memory read from the allocator,
plus what training adds later (AdamW's two moments per trained parameter, 8 bytes each, and the
frozen models of the objective: DPO's reference, a distillation teacher) must stay under
GPU_FRACTION of the device's memory. An out-of-memory error counts as "does not fit".

CPU: estimated, because running out of RAM ends in swapping or the OOM killer rather than an
error. Activation memory per layer follows Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models"), s b h (34 + 5 a s / h) bytes for 16-bit
activations (twice that in fp32), plus the logits (b s V floats, three copies: logits, their
fp32 upcast and its gradient) and weights, gradients and AdamW moments (16 bytes per trained
parameter, 4 per frozen one); the sum must stay under CPU_FRACTION of the available RAM
(/proc/meminfo MemAvailable). On the CPUs this project targets that is almost always the whole
step in one micro-batch (A = 1): the CPU runs large matrices fastest and there is no memory to
save by splitting.
"""

from __future__ import annotations

import torch

from ..errors import UserError

GPU_FRACTION = 0.85  # of the device's memory: headroom for fragmentation and longer batches later
CPU_FRACTION = 0.5  # of the available RAM: the rest of the machine keeps running


def divisors_desc(n: int) -> list[int]:
    return [b for b in range(n, 0, -1) if n % b == 0]


def pick_micro_batch(rows: int, fits) -> int:
    """The largest divisor b of `rows` with fits(b) (tried from the largest down)."""
    for b in divisors_desc(rows):
        if fits(b):
            return b
    raise UserError(f"--batch-size auto: not even one row of the step fits in memory; "
                    f"use a shorter --max-seq-len or a smaller model")


def _frozen_extra_bytes(objective) -> int:
    """Frozen models an objective carries (a DPO reference, a distillation teacher)."""
    return sum(p.numel() * p.element_size() for m in vars(objective).values()
               if isinstance(m, torch.nn.Module) for p in m.parameters())


def _train_state_bytes(model) -> tuple[int, int]:
    """(bytes of trained parameters, bytes of frozen ones) in their current dtype."""
    trained = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    return trained, frozen


def cpu_estimate_bytes(config, rows: int, seq_len: int, dtype: torch.dtype, trained: int, frozen: int) -> int:
    """Estimated peak bytes of one training step on CPU (see the module docstring)."""
    s, h, a, L, V = seq_len, config.hidden_size, config.num_attention_heads, config.num_hidden_layers, config.vocab_size
    scale = 2 if dtype == torch.float32 else 1
    activations = L * s * rows * h * (34 + 5 * a * s / h) * scale
    logits = 3 * rows * s * V * 4
    return int(activations + logits + 4 * trained + frozen)  # trained: weights + grads + 2 moments


def available_ram() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cuda_fits(model, rows: int, seq_len: int, device, dtype, extra: int) -> bool:
    """Run one forward + backward of `rows` x seq_len tokens; does peak + extra fit GPU_FRACTION?"""
    from ..runtime import autocast

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    try:
        ids = torch.randint(0, model.config.vocab_size, (rows, seq_len), device=device)
        with autocast(device, dtype):
            out = model(ids)
        loss = out.logits.float().logsumexp(-1).mean()  # like cross-entropy: touches every logit
        loss.backward()
        peak = torch.cuda.max_memory_allocated(device)
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return peak + extra <= GPU_FRACTION * torch.cuda.get_device_properties(device).total_memory


def fit_batch_size(model, objective, rows: int, seq_len: int, kind: str, device, dtype, say=None) -> tuple[int, int]:
    """(micro-batch, grad_accum) with micro-batch * grad_accum = rows, the micro-batch as large as fits."""
    copies = 2 if kind == "dpo" else 1
    trained, frozen = _train_state_bytes(model)
    extra = _frozen_extra_bytes(objective)
    if device.type == "cuda":
        model.to(device)
        adam = 2 * trained * 4 // max(1, next(model.parameters()).element_size())  # fp32 moments
        micro = pick_micro_batch(rows, lambda b: cuda_fits(model, b * copies, seq_len, device, dtype, adam + extra))
        how = f"measured on {torch.cuda.get_device_name(device)}"
    else:
        ram = available_ram()
        if ram is None:
            micro, how = rows, "no memory information: one micro-batch"
        else:
            budget = CPU_FRACTION * ram
            micro = pick_micro_batch(rows, lambda b: cpu_estimate_bytes(
                model.config, b * copies, seq_len, dtype, trained, frozen) + extra <= budget)
            how = f"estimated against {ram / 2**30:.1f} GiB available RAM"
    if say:
        say(f"--batch-size auto: {micro} rows x {rows // micro} micro-steps = {rows} rows per step ({how})")
    return micro, rows // micro
