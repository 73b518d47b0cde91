"""Knowledge distillation from real-valued teachers.

- :func:`soft_cross_entropy`: -sum softmax(z_T / T) log_softmax(z_S / T), times T^2
  (ReActNet's distributional loss and BinaryViT's logits KD at T = 1);
- :func:`kl_div`: KL(p_T || p_S) at temperature T, times T^2 (Hinton et al.); it differs from
  the soft cross-entropy by the teacher's entropy, a constant for the student;
- :class:`Teacher`: a frozen model in eval mode, run under no_grad.

The trainer talks to a *distiller*: an object with ``loss(student_logits, images, labels,
progress) -> tensor``.  :class:`LogitsKD` is the single-teacher one; BNext's multi-teacher
KD is another distiller with the same method.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    p_t = F.softmax(teacher / temperature, dim=-1)
    return -(p_t * F.log_softmax(student / temperature, dim=-1)).sum(-1).mean() * temperature**2


def kl_div(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    reduction="batchmean", log_target=True) * temperature**2


KD_LOSSES = {"soft_ce": soft_cross_entropy, "kl": kl_div}


class Teacher(nn.Module):
    """A frozen teacher: eval mode always, no gradients, parameters excluded from optimizers.

    ``compile=True`` runs it through torch.compile (the trainer does so with ``train.compile``): a
    teacher's forward is a large part of a distilled student's step, and compiled it is faster
    (``benchmarks/teacher_forward.py``)."""

    def __init__(self, model: nn.Module, compile: bool = False):
        super().__init__()
        self.model = model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        # kept out of the module tree (the compiled wrapper shares self.model's parameters)
        self.__dict__["_compiled"] = torch.compile(self.model) if compile else None

    def train(self, mode: bool = True):  # stays in eval mode whatever the trainer asks
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = self.__dict__["_compiled"]
        return self.model(x) if run is None else run(x)


class LogitsKD:
    """loss = alpha * KD(student, teacher) + (1 - alpha) * CE(student, labels)."""

    def __init__(self, teacher: Teacher, temperature: float = 1.0, alpha: float = 1.0, loss: str = "soft_ce",
                 label_smoothing: float = 0.0):
        if loss not in KD_LOSSES:
            raise ValueError(f"unknown KD loss {loss!r}; allowed: {', '.join(KD_LOSSES)}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"kd.alpha must be in [0, 1], got {alpha!r}")
        if temperature <= 0:
            raise ValueError(f"kd.temperature must be > 0, got {temperature!r}")
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        self.kd, self.label_smoothing = KD_LOSSES[loss], label_smoothing

    def loss(self, student_logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor,
             progress: float) -> torch.Tensor:
        kd = self.kd(student_logits, self.teacher(images), self.temperature)
        if self.alpha >= 1.0:
            return kd
        ce = F.cross_entropy(student_logits, labels, label_smoothing=self.label_smoothing)
        return self.alpha * kd + (1.0 - self.alpha) * ce
