"""A 2-D encoder trained to keep neighbourhoods (beyond the study; README, "Keeping neighbourhoods").

The seed's ReLU encoder (784-128-64-12-2, no activation on the code) is trained with a contrastive
loss instead of a reconstruction: each sample (the anchor) is pulled towards one of its nearest
pixel-space neighbours (the positive), drawn from the exact stored table, and pushed away from every
other sample of the batch. Similarity in the code is the Cauchy kernel q(a, b) = 1 / (1 + |a - b|^2),
t-SNE's; the loss is InfoNCE over the batch (a classification of the positive among all the batch's
samples), which approaches t-SNE's objective as the batch grows (Damrich et al., ICLR 2023). The pull
towards the positive is weighted by ``attraction`` (t-SNE's exaggeration; 1.3, chosen by measurement:
tighter clusters and more of each neighbourhood kept, on every seed; README, "Keeping neighbourhoods").
The positives narrow as training goes: among the first 15 neighbours at the first epoch, the first 5
at the last, linearly in between (chosen by measurement, likewise: more of each neighbourhood kept).
A second loss, ``neg`` (each negative pushed away on its own, as UMAP does), is kept for comparison:
``bench/maps.py`` measures both. Imports only torch and numpy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.compute.models import KeepingEncoder
from common.compute.training import Checkpoint, configure_numerics, epoch_order, initial_state

LOSSES = ("infonce", "neg")
ATTRACTION = 1.3  # chosen by measurement: README, "Keeping neighbourhoods"
FINAL_POSITIVES = 5  # chosen by measurement: README, "Keeping neighbourhoods"


def check_attraction(attraction: float) -> None:
    """Below 1, InfoNCE has no minimum: moving every code away from every other lowers it without end
    (the pull term grows as attraction * log d^2, the push term falls as log d^2), and training ends in
    NaN (seen). Refused for ``neg`` too, so that one range holds for both losses."""
    if not attraction >= 1:  # also refuses NaN
        raise ValueError(f"attraction must be at least 1 (below 1 the loss has no minimum), got {attraction}")


@dataclass(frozen=True)
class KeepConfig:
    epochs: int = 100  # passes over the anchors (each sample is an anchor once per epoch)
    batch_size: int = 256  # anchors per step; each step encodes 2x this many, each anchor has 2x - 2 negatives
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0  # Adam (coupled, as the study's); 0: no decay
    seed: int = 0  # the initial weights, each epoch's order and each epoch's positives
    positives: int = 15  # at the first epoch a positive is one of the anchor's first ``positives`` neighbours,
    final_positives: int = FINAL_POSITIVES  # narrowing linearly to the first ``final_positives`` by the last
    loss: str = "infonce"  # or "neg"
    attraction: float = ATTRACTION  # weight of the pull towards the positive (t-SNE's exaggeration); >= 1

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {list(LOSSES)}")
        check_attraction(self.attraction)
        for name in ("epochs", "batch_size", "positives", "final_positives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def columns(self) -> int:
        """How many of each sample's nearest neighbours the training draws from: the table must hold them."""
        return max(self.positives, self.final_positives)

    def positives_at(self, epoch: int) -> int:
        """Epoch ``epoch``'s (1-based) positives are among the first this many neighbours: ``positives`` at
        the first epoch, ``final_positives`` at the last, linear in between (rounded half to even). Wide
        positives first lay out the clusters; narrow ones last draw each sample beside its nearest few."""
        if self.epochs == 1 or self.final_positives == self.positives:
            return self.positives
        frac = (epoch - 1) / (self.epochs - 1)
        return int(round(self.positives + (self.final_positives - self.positives) * frac))


def initial_encoder(seed: int) -> KeepingEncoder:
    model = KeepingEncoder()
    model.load_state_dict(initial_state("relu_keep", seed))
    return model


def squared_distances(a: Tensor, z: Tensor) -> Tensor:
    """|a_i - z_j|^2 for every pair, as |a_i|^2 + |z_j|^2 - 2 a_i.z_j (one small matrix product, no (B, M, 2)
    temporary), clamped at 0 against rounding: (B, 2), (M, 2) -> (B, M)."""
    return torch.addmm(z.square().sum(1)[None, :], a, z.T, alpha=-2).add(a.square().sum(1, keepdim=True)).clamp(min=0)


def cauchy_logits(a: Tensor, z: Tensor) -> Tensor:
    """log q(a_i, z_j) = -log(1 + |a_i - z_j|^2) for every pair: (B, 2), (M, 2) -> (B, M)."""
    return -torch.log1p(squared_distances(a, z))


def keep_loss(anchors: Tensor, positives: Tensor, loss: str = "infonce", attraction: float = 1.0) -> Tensor:
    """The mean loss of a batch of anchor codes (B, 2) and their positives' codes (B, 2).

    Every other sample of the batch (2B - 2 of them: the other anchors and the other positives) is a
    negative of anchor i. ``infonce``: -attraction * log q(a_i, p_i) + log sum_j q(a_i, z_j), the sum
    over those 2B - 1 candidates (at attraction 1, -log of the positive's share of the sum).
    ``neg``: -attraction * log q(a_i, p_i) - mean_j log(1 - q(a_i, z_j)) over the 2B - 2 negatives.
    """
    check_attraction(attraction)
    b = anchors.shape[0]
    pos = torch.log1p((anchors - positives).square().sum(1))  # -log q(a_i, p_i), exactly
    if attraction != 1:  # at 1, the loss graph of before the weight existed, so its runs keep their bits
        pos = pos * attraction
    q = torch.reciprocal(1 + squared_distances(anchors, torch.cat([anchors, positives])))  # (B, 2B)
    if loss == "infonce":
        rest = q.sum(1) - q.diagonal()  # every candidate but the anchor itself
        return (pos + torch.log(rest)).mean()
    if loss == "neg":
        keep = torch.ones_like(q)
        eye = torch.arange(b, device=q.device)
        keep[eye, eye] = 0  # the anchor itself
        keep[eye, eye + b] = 0  # its positive
        rep = -(torch.log1p(-q.clamp(max=1 - 1e-6)) * keep).sum(1) / max(1, 2 * b - 2)
        return (pos + rep).mean()
    raise ValueError(f"unknown loss {loss!r}; expected one of {list(LOSSES)}")


def draw_positives(nbr: Tensor, anchors: Tensor, m: int, seed: int, epoch: int) -> Tensor:
    """One of each anchor's first ``m`` neighbours, uniformly, seeded by (seed, epoch): (B,) ids."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
    col = torch.randint(0, m, (nbr.shape[0],), generator=g)  # one draw per sample, fixed for the epoch
    return nbr[anchors, col[anchors]]


def train_keeping(
    x: Tensor,
    nbr: np.ndarray | Tensor,
    cfg: KeepConfig,
    *,
    resume: Checkpoint | None = None,
    on_epoch_end: Callable[[Checkpoint], None] | None = None,
) -> tuple[KeepingEncoder, Checkpoint]:
    """Train the encoder on ``x`` ((N, 784) in [-1, 1]) with ``nbr`` ((N, K) ids, each row the sample's
    exact pixel-space neighbours, nearest first; K >= ``cfg.columns``). Seeded and resumable like the
    autoencoders (a checkpoint after every epoch), on one thread so that no result depends on the
    machine's thread count. Returns the encoder (eval mode) and its checkpoint."""
    nbr = torch.as_tensor(np.asarray(nbr), dtype=torch.long)
    n = x.shape[0]
    if nbr.shape[0] != n or nbr.shape[1] < cfg.columns:
        raise ValueError(f"need a ({n}, >= {cfg.columns}) neighbour table, got {tuple(nbr.shape)}")
    configure_numerics()
    model = initial_encoder(cfg.seed)
    try:  # the fused kernel, as the autoencoders'
        optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch without fused CPU Adam
        optim = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ck = Checkpoint(epoch=0, model_state=model.state_dict(), optim_state={}, losses=[])
    if resume is not None:
        model.load_state_dict(resume.model_state)
        if resume.optim_state:
            optim.load_state_dict(resume.optim_state)
        ck = resume
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a GEMM's bits can depend on its thread count; the result must not
    try:
        ck = _epochs(model, optim, ck, x, nbr, cfg, on_epoch_end)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, ck


def _epochs(model: KeepingEncoder, optim: torch.optim.Optimizer, ck: Checkpoint, x: Tensor, nbr: Tensor,
            cfg: KeepConfig, on_epoch_end: Callable[[Checkpoint], None] | None) -> Checkpoint:
    n = x.shape[0]
    for epoch in range(ck.epoch + 1, cfg.epochs + 1):
        order = epoch_order(n, cfg.seed, epoch)
        positive = draw_positives(nbr, torch.arange(n), cfg.positives_at(epoch), cfg.seed, epoch)  # (N,): this epoch's
        total, steps = 0.0, 0
        for b0 in range(0, n, cfg.batch_size):
            a = order[b0 : b0 + cfg.batch_size]
            if a.shape[0] < 2:
                continue  # one anchor has no negative
            z = model(x[torch.cat([a, positive[a]])])
            loss = keep_loss(z[: a.shape[0]], z[a.shape[0]:], cfg.loss, cfg.attraction)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            total += loss.item()
            steps += 1
        ck = Checkpoint(epoch=epoch, model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
                        optim_state=copy.deepcopy(optim.state_dict()), losses=[*ck.losses, total / max(1, steps)])
        if on_epoch_end is not None:
            on_epoch_end(ck)
    return ck
