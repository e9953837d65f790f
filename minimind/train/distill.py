"""White-box knowledge distillation: a small student learns the teacher's whole next-token distribution.

Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network"): besides the hard
label y_t, the student matches the teacher's softened distribution at every trained position,

    p^T = softmax(z / T)              z: logits, T: temperature (T > 1 shows the "dark knowledge"
                                         in the small probabilities of the wrong tokens)
    L   = alpha * CE(y, p_student)  +  (1 - alpha) * T^2 * KL(p_teacher^T || p_student^T)

    KL(p || q) = sum_v p_v (log p_v - log q_v)

averaged over the assistant's tokens (the SFT loss mask). The T^2 factor keeps the soft term's
gradient on the same scale as the hard term's when T changes (the gradient of the KL scales as
1/T^2). "White-box" means the teacher's logits are available, so teacher and student must share
the vocabulary: the same token id must mean the same string (checked by tokenizer fingerprint).

The teacher is frozen (requires_grad False, eval mode) and runs in inference mode, in bf16 where
the hardware is fast at it; only the trained positions go through its lm_head, which saves the
(B, T, V) logits tensor for the prompt and padding positions.

Held-out evaluation (`eval_loss`) reports the plain cross-entropy CE(y, p_student): that is the
number to compare with a student trained by SFT alone, while the KL to a teacher is a training
signal, not a measure of quality. It also skips the teacher's forward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..runtime import freeze
from .pretrain import IGNORE, packed_inputs


def distill_loss(student_logits, teacher_logits, labels, alpha: float, temperature: float):
    """Distillation loss over N trained positions: student/teacher logits (N, V), labels (N,).

    Returns (loss, ce, kl) with kl = KL(p_teacher^T || p_student^T), token mean.
    """
    T = temperature
    ce = F.cross_entropy(student_logits.float(), labels)  # hard-label term
    log_q = F.log_softmax(student_logits.float() / T, dim=-1)  # (N, V) student, softened
    log_p = F.log_softmax(teacher_logits.float() / T, dim=-1)  # (N, V) teacher, softened
    kl = (log_p.exp() * (log_p - log_q)).sum(-1).mean()  # KL(p || q) per position, mean over N
    return alpha * ce + (1 - alpha) * T * T * kl, ce, kl


class Distillation:
    """loss(model, batch) for SFT batches: hard CE + softened KL to a frozen teacher."""

    name = "distill"

    def __init__(self, teacher, alpha: float = 0.5, temperature: float = 2.0):
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"--alpha must be in [0, 1], got {alpha}")
        if not temperature > 0:
            raise UserError(f"--temperature must be positive, got {temperature}")
        self.teacher = freeze(teacher)
        self.alpha, self.temperature = float(alpha), float(temperature)

    def to(self, device):
        self.teacher.to(device)
        return self

    @torch.inference_mode()
    def teacher_logits(self, input_ids, keep, packed: dict):
        """Teacher logits at the trained positions only: input_ids (B, T), keep (B, T) -> (N, V).

        `packed`: positions and mask of packed rows (the teacher sees each conversation alone too).
        """
        h, _ = self.teacher.model(input_ids, packed.get("position_ids"), packed.get("mask"))  # (B, T, d)
        return self.teacher.lm_head(h[keep])  # (N, V)

    def eval_loss(self, model, batch):
        """Held-out evaluation: the student's plain CE, comparable with SFT (see above)."""
        labels = batch["labels"]  # (B, T)
        keep = labels != IGNORE
        out = model(batch["input_ids"], **packed_inputs(batch))  # (B, T, V)
        ce = F.cross_entropy(out.logits[keep].float(), labels[keep])
        return ce, {"n_tokens": batch["n_tokens"], "ce": ce.detach()}

    def loss(self, model, batch):
        labels = batch["labels"]  # (B, T), IGNORE outside the assistant's tokens
        keep = labels != IGNORE  # (B, T)
        packed = packed_inputs(batch)
        out = model(batch["input_ids"], **packed)  # student logits (B, T, V)
        # clone: an inference-mode tensor cannot be saved for the backward pass of the KL
        t_logits = self.teacher_logits(batch["input_ids"], keep, packed).clone()  # (N, V)
        loss, ce, kl = distill_loss(out.logits[keep], t_logits, labels[keep], self.alpha, self.temperature)
        metrics = {"n_tokens": batch["n_tokens"], "ce": ce.detach(), "kl": kl.detach()}
        if out.aux_loss is not None:  # MoE load balancing
            loss = loss + out.aux_loss
        return loss, metrics


def check_same_vocabulary(teacher_cfg, teacher_tok, student_cfg, student_tok, where: str) -> None:
    """Refuse a teacher whose token ids mean something else than the student's."""
    if teacher_cfg.vocab_size != student_cfg.vocab_size:
        raise UserError(f"{where}: teacher vocab_size {teacher_cfg.vocab_size} != student vocab_size "
                        f"{student_cfg.vocab_size}; white-box distillation needs one shared tokenizer")
    if teacher_tok.fingerprint() != student_tok.fingerprint():
        raise UserError(f"{where}: the teacher's tokenizer ({teacher_tok.fingerprint()}) differs from the "
                        f"student's ({student_tok.fingerprint()}); train the student with the teacher's "
                        f"tokenizer (--tokenizer TEACHER) so that token ids mean the same strings")
