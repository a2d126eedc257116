"""Per-iteration learning rate: warmup (the authors' quadratic ramp, or linear), then step or cosine.

The training loop sets each step's learning rate from the closed form :meth:`LRSchedule.lr_at`, so
a resumed run needs no scheduler state; the object is also a picklable multiplier for
``torch.optim.lr_scheduler.LambdaLR`` in loops of one's own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    """The learning rate of every optimizer step of a run, from the recipe's schedule keys.

    ``milestones`` are fractions of ``epochs`` (step schedule, ×``gamma`` at each); warmup ramps
    from ``warmup_lr`` over ``warmup_epochs`` (fractional allowed) with the given shape.
    """

    lr: float
    epochs: int
    steps_per_epoch: int
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    warmup_shape: str = "quadratic"
    kind: str = "step"
    milestones: tuple = (0.5, 0.75)
    gamma: float = 0.1

    def base_lr_at_epoch(self, epoch: float) -> float:
        """The post-warmup schedule. Step decays at the start of epoch ``max(1, floor(m·epochs))``
        (0-based: He et al.'s 91 and 136 of 182 for m = 0.5, 0.75; the WRN paper's 60/120/160 of 200
        for 0.3/0.6/0.8); cosine is continuous in (fractional) epochs after warmup."""
        if self.kind == "constant":
            return self.lr
        if self.kind == "step":
            drops = sum(int(epoch) >= max(1, int(m * self.epochs)) for m in self.milestones)
            return self.lr * self.gamma ** drops
        if self.kind == "cosine":
            span = max(self.epochs - self.warmup_epochs, 1e-12)
            t = min(max((epoch - self.warmup_epochs) / span, 0.0), 1.0)
            return 0.5 * self.lr * (1 + math.cos(math.pi * t))
        raise ValueError(f"unknown schedule {self.kind!r}")

    def lr_at(self, it: int) -> float:
        """Learning rate of optimizer step ``it`` (0-based, counted over the whole run)."""
        e, j = divmod(it, self.steps_per_epoch)
        epoch = it / self.steps_per_epoch
        if e < self.warmup_epochs:
            # Authors' train.py: alpha = (e + (j + off)/nb) / E, off = 1 when warmup_lr == 0 so that
            # the first step is not at lr 0; lr = warmup_lr + alpha^2 (lr_e - warmup_lr).
            off = 1 if self.warmup_lr == 0 else 0
            alpha = min((e + (j + off) / self.steps_per_epoch) / self.warmup_epochs, 1.0)
            ramp = alpha ** 2 if self.warmup_shape == "quadratic" else alpha
            target = self.base_lr_at_epoch(e) if self.kind != "cosine" else self.lr
            return self.warmup_lr + ramp * (target - self.warmup_lr)
        return self.base_lr_at_epoch(epoch if self.kind == "cosine" else e)

    def __call__(self, it: int) -> float:
        return self.lr_at(it) / self.lr
