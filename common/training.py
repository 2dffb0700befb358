"""Training one autoencoder, seeded and resumable. Nothing here knows about Celery or SQL.

The trainer calls ``on_epoch_end(checkpoint)`` after every epoch; the caller stores the checkpoint
(the worker and the CLI both write it to the database) and may raise to stop. A run resumed from a
checkpoint continues exactly as if it had never stopped: each epoch's shuffle is seeded by
(seed, epoch), and the checkpoint holds the model, the Adam state and the loss history.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from common.models import build_model, loss_name
from common.names import MODEL_NAMES


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 100  # passes over the data
    batch_size: int = 100  # samples per Adam step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 1e-3  # Adam (L2) weight decay
    seed: int = 0  # seeds the initial weights (per model) and each epoch's shuffle
    recon_epoch: int = 90  # keep reconstructions after this epoch (or the last, when fewer)


@dataclass
class Checkpoint:
    """Everything needed to continue training after ``epoch`` finished epochs."""

    epoch: int
    model_state: dict[str, Tensor]
    optim_state: dict
    losses: list[float] = field(default_factory=list)  # mean batch loss of each finished epoch
    reconstructions: Tensor | None = None  # (R, 784) at the reconstruction epoch, once reached
    recon_epoch: int | None = None

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save(
            {
                "epoch": self.epoch,
                "model_state": self.model_state,
                "optim_state": self.optim_state,
                "losses": self.losses,
                "reconstructions": self.reconstructions,
                "recon_epoch": self.recon_epoch,
            },
            buf,
        )
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Checkpoint:
        # weights_only=True (the default since torch 2.6): a checkpoint holds tensors and plain values only
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return cls(**d)


def model_seed(seed: int, name: str) -> int:
    """Each model gets its own initial weights, stable across runs."""
    return seed * 1009 + MODEL_NAMES.index(name)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffle of epoch ``epoch`` (1-based), the same for every model and on every resume."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(device)


def _loss_fn(name: str) -> nn.Module:
    return nn.L1Loss() if loss_name(name) == "l1" else nn.MSELoss()


def train(
    name: str,
    x: Tensor,
    cfg: TrainConfig,
    *,
    recon_ids: list[int],
    device: str = "cpu",
    resume: Checkpoint | None = None,
    on_epoch_end: Callable[[Checkpoint], None] | None = None,
) -> tuple[nn.Module, Checkpoint]:
    """Train model ``name`` on ``x`` ((N, 784) in [-1, 1]) for ``cfg.epochs`` epochs.

    Returns the trained model (on the CPU, eval mode) and its final checkpoint.
    """
    dev = resolve_device(device)
    torch.manual_seed(model_seed(cfg.seed, name))
    model = build_model(name).to(dev)
    optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = Checkpoint(epoch=0, model_state={}, optim_state={})
    if resume is not None:
        model.load_state_dict(resume.model_state)
        optim.load_state_dict(resume.optim_state)
        ckpt = resume
    loss_fn = _loss_fn(name)
    xd = x.to(dev)
    n = xd.shape[0]
    recon_at = min(cfg.recon_epoch, cfg.epochs)
    for epoch in range(ckpt.epoch + 1, cfg.epochs + 1):
        model.train()
        order = epoch_order(n, cfg.seed, epoch).to(dev)
        total = torch.zeros((), device=dev, dtype=torch.float64)
        batches = 0
        for start in range(0, n, cfg.batch_size):
            batch = xd[order[start : start + cfg.batch_size]]  # (B, 784)
            loss = loss_fn(model(batch), batch)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += loss.detach()
            batches += 1
        recon, recon_epoch = ckpt.reconstructions, ckpt.recon_epoch
        if epoch == recon_at:
            model.eval()
            with torch.no_grad():
                recon = model(xd[recon_ids]).cpu()
            recon_epoch = epoch
        ckpt = Checkpoint(
            epoch=epoch,
            model_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
            optim_state=_cpu(optim.state_dict()),
            losses=[*ckpt.losses, float(total) / batches],
            reconstructions=recon,
            recon_epoch=recon_epoch,
        )
        if on_epoch_end is not None:
            on_epoch_end(ckpt)
    model.eval()
    return model.cpu(), ckpt


def _cpu(obj):
    if isinstance(obj, Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


@torch.no_grad()
def encode(model: nn.Module, x: Tensor, batch_size: int = 10_000) -> Tensor:
    """The 2-D code of every row of ``x``: (N, 784) -> (N, 2) float32 on the CPU."""
    dev = next(model.parameters()).device
    model.eval()
    out = [model.encoder(x[i : i + batch_size].to(dev)).cpu() for i in range(0, x.shape[0], batch_size)]
    return torch.cat(out).float()


def load_trained(name: str, model_state: dict[str, Tensor]) -> nn.Module:
    model = build_model(name)
    model.load_state_dict(model_state)
    model.eval()
    return model
