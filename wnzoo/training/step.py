"""One optimizer step, eager or compiled, with no host sync.

On a GPU a CIFAR ResNet step is bound by kernel launches, not arithmetic: ``wn_resnet110`` issues
about 2,800 kernels per step. ``compile='reduce-overhead'`` compiles forward, loss and accuracy
count with ``torch.compile`` and replays each of forward and backward as one CUDA graph; the
optimizer is a fused SGD (one kernel) on CUDA. Shapes are fixed (the loop drops the last partial
batch), and the step returns device tensors only, so the host never waits inside an epoch.
On the CPU the same code compiles without graphs, which is how its equality with the eager step is
tested. Eager (``compile='none'``) is the fallback, and a compile that fails falls back to it.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrainStep", "LossAndCorrect"]


class LossAndCorrect(nn.Module):
    """Forward, cross-entropy and the number of correct predictions: the part that is compiled."""

    def __init__(self, net: nn.Module, label_smoothing: float, autocast: bool) -> None:
        super().__init__()
        self.net, self.label_smoothing, self.autocast = net, label_smoothing, autocast

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        return loss, (logits.argmax(1) == y).sum()


class TrainStep:
    """``step(x, y, lr)`` → ``(loss, correct)`` device tensors, after one SGD update of ``model``.

    ``net`` is what runs the forward (``model`` itself, or its DDP wrapper); ``grad_clip`` the
    max global norm of ``model``'s gradients (0: none); ``ema`` a timm ``ModelEmaV3`` or ``None``.
    """

    def __init__(self, model: nn.Module, net: nn.Module, opt: torch.optim.Optimizer, *, compile: str = "none",
                 autocast: bool = False, label_smoothing: float = 0.0, grad_clip: float = 0.0, ema=None) -> None:
        self.model, self.opt, self.grad_clip, self.ema = model, opt, grad_clip, ema
        self.eager = LossAndCorrect(net, label_smoothing, autocast)
        self.mode = compile
        self.graphs = compile == "reduce-overhead" and next(model.parameters()).is_cuda
        self.forward = self.eager if compile == "none" else torch.compile(self.eager, mode=compile)
        self._unproven = 0 if compile == "none" else 3

    @property
    def used(self) -> str:
        """The mode in effect: ``self.mode``, marked when the compiler ran without CUDA graphs on a GPU
        (it skips them, e.g., for a graph it cannot capture) so a slow run says why."""
        if self.graphs and torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0):
            return f"{self.mode} (CUDA graphs skipped)"
        return self.mode

    def _forward_backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs:  # a new iteration: the previous replay's outputs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        loss, correct = self.forward(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), correct

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        for group in self.opt.param_groups:
            group["lr"] = lr
        if self._unproven:  # the compiler runs in the first calls (forward, backward, graph capture)
            buffers = {k: b.clone() for k, b in self.model.named_buffers()}  # BN statistics before the step
            try:
                loss, correct = self._forward_backward(x, y)
                self._unproven -= 1
            except (torch.OutOfMemoryError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step computes the same
                warnings.warn(f"compile={self.mode!r} failed ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:200]}); continuing eagerly", RuntimeWarning)
                with torch.no_grad():  # a compiled forward may have run before the failure
                    for k, b in self.model.named_buffers():
                        b.copy_(buffers[k])
                self.forward, self.mode, self.graphs, self._unproven = self.eager, "none", False, 0
                loss, correct = self._forward_backward(x, y)
        else:
            loss, correct = self._forward_backward(x, y)
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss, correct
