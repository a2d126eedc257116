"""One SGD step of a run, or of several stacked runs, as one function: forward, backward and update.

On a GPU a CIFAR ResNet step is bound by kernel launches, not arithmetic: ``wn_resnet110`` issues
about 2,800 kernels per step. Here a step is a pure function of the weights, BN buffers, momentum
buffers, batch and learning rates: ``torch.func.grad`` gives the gradients and the SGD update
follows in the same function. ``torch.compile`` therefore sees one graph, and with
``compile='reduce-overhead'`` a whole step, update included, is one CUDA graph replay. Every
learning rate is a device tensor (one per stacked run) and the step returns device tensors only,
so the host never waits inside an epoch. On the CPU the same function compiles without graphs,
which is how its equality with the eager step is tested. Eager (``compile='none'``) is the
fallback, and a compile that fails falls back to it.

The update is ``torch.optim.SGD``'s (weight decay added to the gradient, momentum without
dampening, optionally Nesterov), written out because the runs of a stack share each tensor but
not their learning rate, momentum, weight decay or gradient clipping.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.func import functional_call, grad

from .._io import atomic_write
from .stack import Stacked

__all__ = ["TrainStep", "RunOptim", "load_compile_cache", "save_compile_cache", "COMPILE_CACHE_MAX_BYTES"]

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class RunOptim:
    """One run's update rule and loss: what its recipe sets (weight decay per parameter name)."""

    momentum: float
    nesterov: bool
    weight_decay: Mapping[str, float]
    grad_clip: float = 0.0        # max norm of the run's whole gradient; 0: none
    label_smoothing: float = 0.0


class TrainStep:
    """``step(x, y, lr)`` → ``(loss, correct)``, one value per run, after one SGD update of every run.

    ``x`` is the runs' batches side by side (:meth:`Stacked.inputs`), ``y`` their labels ``(B, n)``
    and ``lr`` their learning rates ``(n,)``, on the model's device. ``momentum`` holds a stacked SGD
    momentum buffer for every parameter name (``None``: all zero, which is ``torch.optim.SGD``'s
    first step). ``ema`` is a timm ``ModelEmaV3`` of ``stacked.module`` or ``None``. With
    ``world > 1`` processes (torchrun) the gradients are averaged over them before the update.
    """

    def __init__(self, stacked: Stacked, runs: Sequence[RunOptim], momentum: Mapping[str, torch.Tensor] | None = None,
                 *, compile: str = "none", autocast: bool = False, ema=None, world: int = 1) -> None:
        if len(runs) != stacked.n:
            raise ValueError(f"{len(runs)} update rules for a stack of {stacked.n} runs")
        self.stacked, self.module, self.n, self.ema, self.world = stacked, stacked.module, stacked.n, ema, world
        self.autocast = autocast
        self.params: Tensors = {k: p.detach() for k, p in self.module.named_parameters()}
        self.buffers: Tensors = dict(self.module.named_buffers())
        self.momentum: Tensors = {k: torch.zeros_like(p) if momentum is None else torch.empty_like(p).copy_(momentum[k])
                                  for k, p in self.params.items()}
        dev = next(iter(self.params.values())).device

        def per_run(values: Sequence[float], dtype=torch.float32) -> torch.Tensor:
            return torch.tensor(list(values), dtype=dtype, device=dev)

        self.label_smoothing = [r.label_smoothing for r in runs]
        self._momentum = per_run(r.momentum for r in runs)
        self._nesterov = per_run((r.nesterov for r in runs), torch.bool) if any(r.nesterov for r in runs) else None
        self._clip = per_run(r.grad_clip for r in runs) if any(r.grad_clip for r in runs) else None
        self._decay = {k: per_run(r.weight_decay[k] for r in runs) for k in self.params
                       if any(r.weight_decay[k] for r in runs)}
        self.mode = compile
        self.graphs = compile == "reduce-overhead" and dev.type == "cuda"
        self._unproven = 0
        self._set_mode(compile)

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        # With several processes the gradients are averaged between the two halves: only the first is compiled.
        fn = self._step if self.world == 1 else self._grads
        if mode == "none":
            self._run, self._unproven = fn, 0
            return
        for t in (*self.params.values(), *self.buffers.values(), *self.momentum.values()):
            torch._dynamo.mark_static_address(t)  # updated in place: CUDA graphs keep their addresses
        self._run = torch.compile(fn, mode=mode)
        self._unproven = 3  # the compiler runs in the first calls (tracing, graph capture)

    @property
    def used(self) -> str:
        """The mode in effect: ``self.mode``, marked when the compiler ran without CUDA graphs on a GPU
        (it skips them, e.g., for a graph it cannot capture) so a slow run says why."""
        if self.graphs and torch._dynamo.utils.counters["inductor"].get("cudagraph_skips", 0):
            return f"{self.mode} (CUDA graphs skipped)"
        return self.mode

    # ---- the step, a function of the tensors above ---------------------------------------------------

    def _loss(self, params: Tensors | None, buffers: Tensors | None, x: torch.Tensor, y: torch.Tensor):
        """The runs' summed loss, and each run's loss and correct count; ``params`` and ``buffers``
        replace the module's own (``None``: the module as it is)."""
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.module(x) if params is None else functional_call(self.module, (params, buffers), (x,))
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 out of bf16, float64 stays
        logits = logits.unflatten(1, (self.n, -1))  # (B, runs, classes)
        losses = torch.stack([F.cross_entropy(logits[:, k], y[:, k], label_smoothing=self.label_smoothing[k])
                              for k in range(self.n)])
        return losses.sum(), (losses.detach(), (logits.argmax(2) == y).sum(0))

    def _grads(self, x: torch.Tensor, y: torch.Tensor) -> tuple[Tensors, torch.Tensor, torch.Tensor]:
        # The runs' losses are summed: each run's parameters get exactly its own loss's gradient.
        if self.mode != "none":  # torch.func.grad: the compiler traces forward and backward into one graph
            grads, (losses, correct) = grad(self._loss, has_aux=True)(self.params, self.buffers, x, y)
            return grads, losses, correct
        # Eagerly, autograd itself: the same derivatives without torch.func's wrappers (faster on a CPU)
        leaves = dict(self.module.named_parameters())
        with torch.enable_grad():
            total, (losses, correct) = self._loss(None, None, x, y)
        return dict(zip(leaves, torch.autograd.grad(total, list(leaves.values())))), losses, correct

    @torch.no_grad()
    def _update(self, grads: Tensors, lr: torch.Tensor) -> None:
        n = self.n
        rows = lambda t: t.unflatten(0, (n, -1))  # noqa: E731 - (runs, rows of one run, …): views
        coef = None
        if self._clip is not None:  # as torch.nn.utils.clip_grad_norm_, per run
            norm = torch.stack([rows(g).flatten(1).pow(2).sum(1) for g in grads.values()]).sum(0).sqrt()
            coef = torch.where(self._clip > 0, (self._clip / (norm + 1e-6)).clamp(max=1.0), 1.0)
        for k, p in self.params.items():
            shape = (n,) + (1,) * p.dim()
            d = rows(grads[k])
            if coef is not None:
                d = d * coef.view(shape)
            if k in self._decay:
                d = d + self._decay[k].view(shape) * rows(p)
            buf = rows(self.momentum[k])
            buf.mul_(self._momentum.view(shape)).add_(d)
            if self._nesterov is not None:
                d = torch.where(self._nesterov.view(shape), d + self._momentum.view(shape) * buf, buf)
            else:
                d = buf
            rows(p).sub_(lr.view(shape) * d)

    def _step(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads, losses, correct = self._grads(x, y)
        self._update(grads, lr)
        return losses, correct

    def _distributed(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        grads, losses, correct = self._run(x, y)
        flat = torch.cat([g.reshape(-1) for g in grads.values()])  # one all-reduce for every gradient
        dist.all_reduce(flat)
        flat /= self.world
        out, i = {}, 0
        for k, g in grads.items():
            out[k] = flat[i:i + g.numel()].view(g.shape)
            i += g.numel()
        self._update(out, lr)
        return losses, correct

    # ---- calling it ----------------------------------------------------------------------------------

    def _call(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graphs:  # a new iteration: the previous replay's outputs may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        return self._distributed(x, y, lr) if self.world > 1 else self._run(x, y, lr)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._unproven:
            saved = {k: t.clone() for k, t in (*self.params.items(), *self.buffers.items())}
            saved.update({f"momentum:{k}": t.clone() for k, t in self.momentum.items()})
            try:
                out = self._call(x, y, lr)
                self._unproven -= 1
            except (torch.OutOfMemoryError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - any compiler failure: the eager step computes the same
                warnings.warn(f"compile={self.mode!r} failed ({type(e).__name__}: "
                              f"{(str(e).splitlines() or [''])[0][:200]}); continuing eagerly", RuntimeWarning)
                with torch.no_grad():  # part of a step may have run before the failure
                    for k, t in (*self.params.items(), *self.buffers.items()):
                        t.copy_(saved[k])
                    for k, t in self.momentum.items():
                        t.copy_(saved[f"momentum:{k}"])
                self.graphs = False
                self._set_mode("none")
                out = self._call(x, y, lr)
        else:
            out = self._call(x, y, lr)
        if self.ema is not None:
            self.ema.update(self.module)
        return out


# ---- the compiler's cache, kept beside a job's states ------------------------------------------------

COMPILE_CACHE_MAX_BYTES = 16 * 2**20  # what a job's output may carry per file


def load_compile_cache(path: str | os.PathLike) -> bool:
    """Prime the compiler's caches from ``path`` (written by :func:`save_compile_cache` on this or
    another machine); ``False`` if there is no such file or this torch cannot (before 2.7). A cache
    from another torch, GPU or model is not used by the compiler, so loading one is harmless."""
    path = Path(path)
    if not path.is_file() or not hasattr(torch.compiler, "load_cache_artifacts"):
        return False
    return torch.compiler.load_cache_artifacts(path.read_bytes()) is not None


def save_compile_cache(path: str | os.PathLike, max_bytes: int = COMPILE_CACHE_MAX_BYTES) -> int | None:
    """Write what the compiler compiled or loaded in this process to ``path`` (atomically); returns
    its size, or ``None`` when there is nothing to save, or it would exceed ``max_bytes``."""
    if not hasattr(torch.compiler, "save_cache_artifacts"):
        return None
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return None
    data = saved[0]
    if len(data) > max_bytes:
        warnings.warn(f"the compiler's cache ({len(data) / 2**20:.1f} MiB) exceeds {max_bytes / 2**20:.0f} MiB; "
                      f"not saved to {path}", RuntimeWarning)
        return None
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    return len(data)
