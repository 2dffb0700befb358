"""A run stopped after its first epoch, for the resume tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.compute.training import Checkpoint


class Stop(Exception):
    pass


def first_checkpoint(run: Callable[[Callable[[Checkpoint], None]], object]) -> Checkpoint:
    """Call ``run(on_epoch_end)`` and stop it once its first epoch ends; returns that epoch's checkpoint,
    read back from its bytes as a stored one would be (torch.load with weights_only=True)."""
    saved: list[bytes] = []

    def stop_after_first(ck: Checkpoint) -> None:
        saved.append(ck.to_bytes())
        raise Stop

    with pytest.raises(Stop):
        run(stop_after_first)
    return Checkpoint.from_bytes(saved[0])
