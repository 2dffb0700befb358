"""Training speed: one stack's epoch with the hand-written backward against autograd's, alone and
as the study runs the two stacks side by side. Runs alternate (A, B, A, B, ...) because this machine's speed
drifts by 10-20 % over minutes; medians are printed.

    python bench/train_step.py --data-dir ../shared/data [--repeat 3] [--batches 600]

Each stack epoch runs on one thread, as in the study. Both ways start from the same weights and the
script checks that they end on the same bits.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common.compute.data import load_dataset  # noqa: E402
from common.compute.names import MODEL_NAMES  # noqa: E402
from common.compute.training import (  # noqa: E402
    ModelStack,
    TrainConfig,
    _make_adam,
    configure_numerics,
    epoch_order,
    initial_state,
    train_group,
    training_groups,
)


def stack_epoch(names: list[str], x: torch.Tensor, order: torch.Tensor, batches: int, hand: bool):
    stack = ModelStack(names, [initial_state(n, 0) for n in names])
    optim = _make_adam(stack, TrainConfig())
    t0 = time.perf_counter()
    for b0 in range(0, batches * 100, 100):
        batch = x.index_select(0, order[b0 : b0 + 100])
        if hand:
            stack.losses_and_grads(batch)
        else:
            optim.zero_grad(set_to_none=True)
            stack.losses(batch).sum().backward()
        optim.step()
    return time.perf_counter() - t0, [p.detach() for p in [*stack.W, *stack.b]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/aeknn-bench-cache"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--batches", type=int, default=600, help="steps per stack epoch (600 = all of MNIST)")
    a = ap.parse_args()
    configure_numerics()
    torch.set_num_threads(1)
    x = load_dataset("mnist", a.data_dir, a.cache_dir).scaled()
    order = epoch_order(x.shape[0], 0, 1)
    print(f"one stack, one thread, {a.batches} steps of 100 (median of {a.repeat}):")
    for names in training_groups(list(MODEL_NAMES)):
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(a.repeat):
            (t_auto, p_auto), (t_hand, p_hand) = (stack_epoch(names, x, order, a.batches, h) for h in (False, True))
            assert all(torch.equal(p, q) for p, q in zip(p_auto, p_hand, strict=True)), "the bits differ"
            times[False].append(t_auto)
            times[True].append(t_hand)
        auto, hand = statistics.median(times[False]), statistics.median(times[True])
        print(f"  {' + '.join(names):22s} autograd {auto:6.2f} s   hand-written {hand:6.2f} s   "
              f"ratio {hand / auto:.2f}   same bits: yes")
    torch.set_num_threads(2)
    hand_written = ModelStack.losses_and_grads
    side: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.repeat):
        for hand in (False, True):
            ModelStack.losses_and_grads = hand_written if hand else autograd_losses_and_grads
            ticks: list[float] = []
            train_group(list(MODEL_NAMES), x, TrainConfig(epochs=3), recon_ids=[0],
                        on_epoch_end=lambda _, ticks=ticks: ticks.append(time.perf_counter()))
            side[hand] += [b - a_ for a_, b in zip(ticks, ticks[1:], strict=False)]  # epochs 2 and 3
    ModelStack.losses_and_grads = hand_written
    auto, hand = statistics.median(side[False]), statistics.median(side[True])
    print(f"both stacks side by side, as the study trains (train_group, one epoch, median of {len(side[True])}):"
          f"\n  autograd {auto:.2f} s   hand-written {hand:.2f} s   ratio {hand / auto:.2f}")


def autograd_losses_and_grads(stack: ModelStack, x: torch.Tensor) -> torch.Tensor:
    """The reference: the same losses and gradients through autograd."""
    for p in [*stack.W, *stack.b]:
        p.grad = None
    loss = stack.losses(x)
    loss.sum().backward()
    return loss.detach()

if __name__ == "__main__":
    main()
