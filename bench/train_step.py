"""Training speed: one stack's epoch through autograd, through the hand-written backward as Python,
and as training runs it (the same step compiled by TorchScript, one call a step), alone and as the
study runs the two stacks side by side. Runs alternate (A, B, A, B, ...) because this machine's speed
drifts by 10-20 % over minutes; medians are printed.

    python bench/train_step.py --data-dir ../shared/data [--repeat 3] [--batches 600]
    python bench/train_step.py --gemms      # only the step's five large matrix products, two BLAS

Each stack epoch runs on one thread, as in the study. Every way starts from the same weights and the
script checks that they end on the same bits. ``--gemms`` times the five large products of a stack's
step (two models, 100 samples) on one thread through torch (MKL on x86, what training uses) and
through numpy (OpenBLAS in its wheels), and the first layer of a stack as one wide product: which BLAS
is faster for training depends on the CPU, as it does for the pixel tables.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS: one thread, as training
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.compute import training  # noqa: E402
from common.compute.data import load_dataset  # noqa: E402
from common.compute.names import SEED_MODELS as MODEL_NAMES  # noqa: E402 - the autoencoders
from common.compute.training import (  # noqa: E402
    ModelStack,
    TrainConfig,
    _Group,
    _make_adam,
    configure_numerics,
    epoch_order,
    initial_state,
    train_group,
    training_groups,
)


def stack_epoch(names: list[str], x: torch.Tensor, order: torch.Tensor, batches: int, way: str):
    """One stack's ``batches`` steps on this thread: autograd, the hand-written backward as Python, or
    the compiled step (``_Group.epoch``, as training runs it). Returns the seconds and the weights."""
    states = [initial_state(n, 0) for n in names]
    if way == "compiled":
        group = _Group(names, states, TrainConfig(), torch.device("cpu"), None)
        t0 = time.perf_counter()
        group.epoch(x, order[: batches * 100], 100)
        return time.perf_counter() - t0, [p.detach() for p in [*group.stack.W, *group.stack.b]]
    stack = ModelStack(names, states)
    optim = _make_adam(stack, TrainConfig())
    t0 = time.perf_counter()
    for b0 in range(0, batches * 100, 100):
        batch = x.index_select(0, order[b0 : b0 + 100])
        if way == "hand-written":
            stack.losses_and_grads(batch)
        else:
            optim.zero_grad(set_to_none=True)
            stack.losses(batch).sum().backward()
        optim.step()
    return time.perf_counter() - t0, [p.detach() for p in [*stack.W, *stack.b]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, help="folder with the MNIST files (needed but for --gemms)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/aeknn-bench-cache"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batches", type=int, default=600, help="steps per stack epoch (600 = all of MNIST)")
    ap.add_argument("--gemms", action="store_true", help="only the step's large matrix products, torch and numpy")
    a = ap.parse_args()
    configure_numerics()
    torch.set_num_threads(1)
    if a.gemms:
        gemms()
        return
    if a.data_dir is None:
        ap.error("--data-dir is needed (but for --gemms)")
    x = load_dataset("mnist", a.data_dir, a.cache_dir).scaled()
    order = epoch_order(x.shape[0], 0, 1)
    print(f"one stack, one thread, {a.batches} steps of 100 (median of {a.repeat}):")
    ways = ("autograd", "hand-written", "compiled")
    for names in training_groups(list(MODEL_NAMES)):
        times: dict[str, list[float]] = {w: [] for w in ways}
        for _ in range(a.repeat):
            runs = {w: stack_epoch(names, x, order, a.batches, w) for w in ways}
            ref = runs["autograd"][1]
            assert all(torch.equal(p, q) for w in ways for p, q in zip(ref, runs[w][1], strict=True)), "bits differ"
            for w in ways:
                times[w].append(runs[w][0])
        med = {w: statistics.median(t) for w, t in times.items()}
        print(f"  {' + '.join(names):22s} " + "   ".join(f"{w} {t:6.2f} s" for w, t in med.items())
              + "   same bits: yes")
    torch.set_num_threads(2)
    hand_written, compiled = ModelStack.losses_and_grads, training._cpu_step
    ways = {"autograd": (autograd_losses_and_grads, None), "hand-written": (hand_written, None),
            "compiled": (hand_written, compiled)}
    side: dict[str, list[float]] = {w: [] for w in ways}
    for _ in range(a.repeat):
        for way, (grads, step) in ways.items():
            ModelStack.losses_and_grads = grads  # the Python step's gradients
            training._cpu_step = step or (lambda: None)  # None: every step as Python
            ticks: list[float] = []
            train_group(list(MODEL_NAMES), x, TrainConfig(epochs=3), recon_ids=[0],
                        on_epoch_end=lambda _, ticks=ticks: ticks.append(time.perf_counter()))
            side[way] += [b - a_ for a_, b in zip(ticks, ticks[1:], strict=False)]  # epochs 2 and 3
    ModelStack.losses_and_grads, training._cpu_step = hand_written, compiled
    med = {w: statistics.median(t) for w, t in side.items()}
    print(f"both stacks side by side, as the study trains (train_group, one epoch, median of "
          f"{len(side['compiled'])}):\n  " + "   ".join(f"{w} {t:.2f} s" for w, t in med.items())
          + f"   hand-written / autograd {med['hand-written'] / med['autograd']:.2f}"
          + f"   compiled / hand-written {med['compiled'] / med['hand-written']:.2f}")


def gemms(calls: int = 300) -> None:
    """The five large products of one stack step (G = 2 models, B = 100 samples), one thread each."""
    g, b = 2, 100
    shapes = {"forward, layer 0": (b, 784, 128), "forward, layer 7": (b, 128, 784),  # h @ W
              "weight grad, layer 0": (784, b, 128), "weight grad, layer 7": (128, b, 784),  # h^T @ g
              "input grad, layer 7": (b, 784, 128)}  # g @ W^T

    def per_call(fn) -> float:
        fn()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t0) / calls

    print(f"one thread, (G={g}) x (M x K) @ (K x N) float32, mean of {calls} calls:")
    print(f"  {'product':22s} {'M x K x N':>14s} {'torch.bmm':>18s} {'numpy.matmul':>18s}")
    for name, (m, k, n) in shapes.items():
        lhs, rhs, out = torch.randn(g, m, k), torch.randn(g, k, n), torch.empty(g, m, n)
        if name.startswith("weight"):  # the operands as the backward pass has them: transposed views
            lhs = torch.randn(g, k, m).transpose(1, 2)
        elif name.startswith("input"):
            rhs = torch.randn(g, n, k).transpose(1, 2)
        flops = 2.0 * g * m * k * n
        t_torch = per_call(lambda lhs=lhs, rhs=rhs, out=out: torch.bmm(lhs, rhs, out=out))
        a_, b_, o_ = lhs.numpy(), rhs.numpy(), out.numpy()  # the same memory
        t_numpy = per_call(lambda a_=a_, b_=b_, o_=o_: np.matmul(a_, b_, out=o_))
        print(f"  {name:22s} {f'{m} x {k} x {n}':>14s} {t_torch * 1e6:7.0f} us {flops / t_torch / 1e9:5.1f} GF/s"
              f" {t_numpy * 1e6:7.0f} us {flops / t_numpy / 1e9:5.1f} GF/s")
    x, w, bias = torch.randn(b, 784), torch.randn(g, 784, 128), torch.randn(g, 1, 128)
    wide_w = w.permute(1, 0, 2).reshape(784, g * 128).contiguous()
    wide_b = bias.permute(1, 0, 2).reshape(1, g * 128).contiguous()
    t_batched = per_call(lambda: torch.baddbmm(bias, x.expand(g, b, 784), w))
    t_wide = per_call(lambda: torch.addmm(wide_b, x, wide_w))
    same = torch.equal(torch.baddbmm(bias, x.expand(g, b, 784), w),
                       torch.addmm(wide_b, x, wide_w).reshape(b, g, 128).permute(1, 0, 2))
    print(f"  layer 0 of the stack as one {b} x 784 x {g * 128} product (torch): {t_wide * 1e6:.0f} us against "
          f"{t_batched * 1e6:.0f} us batched; same bits: {'yes' if same else 'no'}")


def autograd_losses_and_grads(stack: ModelStack, x: torch.Tensor) -> torch.Tensor:
    """The reference: the same losses and gradients through autograd."""
    for p in [*stack.W, *stack.b]:
        p.grad = None
    with torch.enable_grad():  # the training loop runs under no_grad
        loss = stack.losses(x)
        loss.sum().backward()
    return loss.detach()

if __name__ == "__main__":
    main()
