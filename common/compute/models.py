"""The four autoencoders of the study (STUDY.md, "The four models") and the neighbourhood-keeping
encoder (common/compute/keeping.py). Imports only torch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.compute.names import MODEL_NAMES, REFERENCE_MAPS, SEED_MODELS

WIDTHS = (784, 128, 64, 12, 2)  # MNIST's; other data keep the shape with their own dimension first


def widths(dim: int) -> tuple[int, ...]:
    """The study's layer widths for data of ``dim`` values: dim -> 128 -> 64 -> 12 -> 2."""
    return (int(dim),) + WIDTHS[1:]


def _stack(widths: tuple[int, ...], relu: bool, last: nn.Module | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if relu and i < len(widths) - 2:
            layers.append(nn.ReLU())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


class Autoencoder(nn.Module):
    """784 -> 2 -> 784 (``dim`` -> 2 -> ``dim``). ``relu`` puts ReLU between layers (none on the code) and tanh
    on the output."""

    def __init__(self, relu: bool, dim: int = WIDTHS[0]) -> None:
        super().__init__()
        self.encoder = _stack(widths(dim), relu, None)  # (B, 784) -> (B, 2)
        self.decoder = _stack(widths(dim)[::-1], relu, nn.Tanh() if relu else None)  # (B, 2) -> (B, 784)

    def forward(self, x: Tensor) -> Tensor:  # (B, 784) -> (B, 784)
        return self.decoder(self.encoder(x))

    def encode(self, x: Tensor) -> Tensor:  # (B, 784) -> (B, 2)
        return self.encoder(x)


class KeepingEncoder(nn.Module):
    """The seed's ReLU encoder alone (no decoder): ``encoder`` as in the autoencoders. It sees each image
    less ``center``, a fixed buffer: its training set's mean image (a shift of the input, which the first
    layer's bias could absorb: the same functions, better conditioned to train). Weights stored before
    the buffer existed load with a center of 0: the image as it is."""

    def __init__(self, dim: int = WIDTHS[0]) -> None:
        super().__init__()
        self.encoder = _stack(widths(dim), True, None)
        self.register_buffer("center", torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:  # (B, 784) -> (B, 2)
        return self.encoder(x - self.center)

    def encode(self, x: Tensor) -> Tensor:  # (B, 784) -> (B, 2)
        return self(x)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        state_dict.setdefault(prefix + "center", torch.zeros(self.center.shape[0]))  # stored before 2026-11-29: none
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_model_name(name: str) -> None:
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; expected one of {list(MODEL_NAMES)}")


def is_autoencoder(name: str) -> bool:
    """One of the study's four (trained to reconstruct), not an encoder trained to keep neighbourhoods
    nor a reference map."""
    check_model_name(name)
    return name in SEED_MODELS


def build_model(name: str, dim: int = WIDTHS[0]) -> nn.Module:
    """The architecture named by the first half of ``name`` (linear / relu); ``relu_keep``: the ReLU encoder.
    ``dim``: the data's values per sample."""
    if name in REFERENCE_MAPS:
        raise ValueError(f"{name} is a reference map (common/compute/references.py), not a network")
    if not is_autoencoder(name):
        return KeepingEncoder(dim)
    return Autoencoder(relu=name.startswith("relu"), dim=dim)


def input_dim(model_state: dict[str, torch.Tensor]) -> int:
    """The data dimension a stored model was built for (its first layer's inputs)."""
    return int(model_state["encoder.0.weight"].shape[1])


def loss_name(name: str) -> str:
    """The training loss named by the second half of ``name`` (l1 / mse / keep)."""
    check_model_name(name)
    return name.split("_", 1)[1]
