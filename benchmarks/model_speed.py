#!/usr/bin/env python
"""Throughput of WN models against their BN twins, and of fused against unfused inference.

    python benchmarks/model_speed.py [--models wn_resnet56 wn_resnet110] [--runs 3] [--batch 128]

Per run and model, back to back on the same inputs: (a) train steps/s (SGD, forward + backward +
step) of the WN model and of its BN twin; (b) inference images/s of the unfused WN model, the
fused WN model (``wnzoo.fuse``) and the fused BN twin, under ``torch.inference_mode``. Ratios
are taken within a run; the report is the median over runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import wnzoo
from wnzoo.registry import twin_name


def _time(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t) / iters


def train_step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iters: int) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return _time(step, iters)


def infer_time(model: torch.nn.Module, x: torch.Tensor, iters: int) -> float:
    model.eval()

    def fwd():
        with torch.inference_mode():
            model(x)
    return _time(fwd, iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["wn_resnet56", "wn_resnet110"])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--channels-last", action="store_true", help="both sides in channels_last")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    for name in args.models:
        twin = twin_name(name)
        x = torch.randn(args.batch, 3, 32, 32)
        y = torch.randint(0, 10, (args.batch,))
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ratios = {"train WN/BN speed": [], "fused/unfused WN": [], "fused WN/fused BN": []}
        for r in range(args.runs):
            wn, bn = wnzoo.create_model(name), wnzoo.create_model(twin)
            if args.channels_last:
                wn, bn = wn.to(memory_format=torch.channels_last), bn.to(memory_format=torch.channels_last)
            t_wn, t_bn = train_step_time(wn, x, y, args.iters), train_step_time(bn, x, y, args.iters)
            t_unf = infer_time(wn, x, args.iters)
            t_fwn = infer_time(wnzoo.fuse(wn), x, args.iters)
            t_fbn = infer_time(wnzoo.fuse(bn), x, args.iters)
            ratios["train WN/BN speed"].append(t_bn / t_wn)
            ratios["fused/unfused WN"].append(t_unf / t_fwn)
            ratios["fused WN/fused BN"].append(t_fbn / t_fwn)
            print(f"{name} run {r + 1}: train step WN {t_wn * 1e3:.0f} ms, BN {t_bn * 1e3:.0f} ms; inference "
                  f"unfused WN {args.batch / t_unf:.0f} img/s, fused WN {args.batch / t_fwn:.0f} img/s, "
                  f"fused BN {args.batch / t_fbn:.0f} img/s", flush=True)
        for k, v in ratios.items():
            print(f"{name}: {k} = {statistics.median(v):.2f}x  (runs: {', '.join(f'{u:.2f}' for u in v)})")


if __name__ == "__main__":
    main()
