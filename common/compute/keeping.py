"""A 2-D encoder trained to keep neighbourhoods (beyond the study; docs/keeping.md).

The seed's ReLU encoder (784-128-64-12-2, no activation on the code), fed each image less its training
set's mean image (:func:`mean_image`: without it a third of the first layer's units die), is trained
with a contrastive loss instead of a reconstruction: each sample (the anchor) is pulled towards one
of its nearest pixel-space neighbours (the positive), drawn from the exact stored table, and pushed
away from every other sample of the batch. Similarity in the code is the Cauchy kernel
q(a, b) = 1 / (1 + |a - b|^2), t-SNE's; the loss is InfoNCE over the batch (a classification of the
positive among all the batch's samples), which approaches t-SNE's objective as the batch grows (Damrich
et al., ICLR 2023). On a CPU
each InfoNCE step is one TorchScript call with the backward written out, on autograd's bits. The pull
towards the positive is weighted by ``attraction`` (t-SNE's exaggeration; 1.3, chosen by measurement:
tighter clusters and more of each neighbourhood kept, on every seed; docs/keeping.md).
The positives narrow as training goes: among the first 15 neighbours at the first epoch, the first 5
at the last, linearly in between (chosen by measurement, likewise: more of each neighbourhood kept).
Each anchor's input carries Gaussian noise of standard deviation ``noise`` (0.3 on the [-1, 1] pixel
scale; its positive and the negatives none): the encoder learns to map an image and its perturbations
alike, and so maps unseen images more as it maps the training images (chosen by measurement: the test
split within 10 % of the training split, kNN accuracy up on both, at a cost to the training split's
score@10; docs/keeping.md).
After training, the map is refined: the encoder's codes of the training images, moved as free 2-D points
under t-SNE's objective over the exact table with the gradient in full (common/compute/refining.py), keep
each image's nearest neighbours as t-SNE does and more (chosen by measurement: docs/keeping.md; ``refiner``
``infonce`` keeps the earlier refinement, this loss on free points, :func:`refine`). :func:`place` puts
unseen images on a refined map, each started at the median of its nearest map images' codes
(:func:`map_start`), the map held still and the unseen images pulling each other both ways, as the map's
images did (chosen by measurement, likewise).
A second loss, ``neg`` (each negative pushed away on its own, as UMAP does), is kept for comparison:
``bench/maps.py`` measures both. Imports only torch and numpy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from common.compute.models import WIDTHS, KeepingEncoder
from common.compute.names import KEEP_ENCODER_SHARE
from common.compute.training import (
    Checkpoint,
    compiled,
    configure_numerics,
    encode,
    epoch_order,
    fused_adam_args,
    initial_state,
)

LOSSES = ("infonce", "neg")
REFINERS = ("tsne", "infonce")  # the map's refinement: t-SNE's objective in full (refining.py), or as before
ATTRACTION = 1.3  # chosen by measurement: docs/keeping.md
FINAL_POSITIVES = 5  # chosen by measurement: docs/keeping.md
NOISE = 0.3  # chosen by measurement: docs/keeping.md
NOISE_ROWS = 2048  # the noise bank: each step's anchors take a run of its rows at a seeded offset
ENCODER_SHARE = KEEP_ENCODER_SHARE  # the encoder's share of the study's epochs (common/compute/names.py)
REFINE_LR = 0.03  # Adam on the free codes; chosen by measurement: docs/keeping.md
PLACE_POSITIVES = 10  # an unseen sample's first neighbours it may be pulled to; chosen by measurement: docs/keeping.md
PLACE_EPOCHS = 900  # epochs to place unseen samples (300 until 2026-12-07); chosen by measurement: docs/keeping.md
REFINE_SEED = 7_919  # the refinement's draws differ from the encoder's: epoch e draws as epoch e + 7,919 would


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
    noise: float = NOISE  # standard deviation of the Gaussian noise on each anchor's input; 0: none
    refine_epochs: int = 0  # then the training codes refined as free points (0: not refined): by ``refiner``
    refine_lr: float = REFINE_LR  # Adam on the free points (``infonce``)
    refiner: str = "tsne"  # t-SNE's objective and schedule (refining.refine_map; its own iterations, whatever
    # refine_epochs), or ``infonce``: this loss on free points for refine_epochs epochs (:func:`refine`)

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; expected one of {list(LOSSES)}")
        if self.refiner not in REFINERS:
            raise ValueError(f"unknown refiner {self.refiner!r}; expected one of {list(REFINERS)}")
        check_attraction(self.attraction)
        if not 0 <= self.noise <= 10:  # also refuses NaN; 10 drowns any image (pixels lie in [-1, 1])
            raise ValueError(f"noise must be in [0, 10] (a standard deviation on the [-1, 1] pixel scale), "
                             f"got {self.noise}")
        if self.batch_size > NOISE_ROWS and self.noise > 0:
            raise ValueError(f"batch_size must be at most {NOISE_ROWS} with noise (the noise bank's rows), "
                             f"got {self.batch_size}")
        for name in ("epochs", "batch_size", "positives", "final_positives"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.refine_epochs < 0:
            raise ValueError(f"refine_epochs must be at least 0 (0: the encoder's codes as they are), "
                             f"got {self.refine_epochs}")
        if not 0 < self.refine_lr <= 1:  # also refuses NaN; at 1 the free points already fly apart (seen)
            raise ValueError(f"refine_lr must be in (0, 1], got {self.refine_lr}")

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


def initial_encoder(seed: int, dim: int = WIDTHS[0]) -> KeepingEncoder:
    model = KeepingEncoder(dim)
    model.load_state_dict(initial_state("relu_keep", seed, dim))
    return model


def mean_image(x: Tensor) -> Tensor:
    """``x``'s (N, 784) mean image, which the encoder subtracts from its input. MNIST's images lie in
    [-1, 1] with a background of -1: trained on them as they are, the first-layer units that learn to
    weigh the background negatively fall below zero for every image and stay there (48 or 49 of 128 in
    the first layer and 16 or 17 of 64 in the second after 100 epochs); centred, none in the first layer
    and 2 in the second, and each neighbourhood keeps more (docs/keeping.md)."""
    return x.mean(0)


def _pair_terms(a: Tensor, z: Tensor) -> Tensor:
    """|a_i|^2 + |z_j|^2 - 2 a_i.z_j for every pair, unclamped (rounding may put it below 0): one small matrix
    product, no (B, M, 2) temporary; the one (B, M) buffer is the addmm's, added to in place (addmm's
    backward keeps its inputs, not its output, so autograd allows it)."""
    return torch.addmm(z.square().sum(1)[None, :], a, z.T, alpha=-2).add_(a.square().sum(1, keepdim=True))


def squared_distances(a: Tensor, z: Tensor) -> Tensor:
    """|a_i - z_j|^2 for every pair, clamped at 0 against rounding: (B, 2), (M, 2) -> (B, M)."""
    return _pair_terms(a, z).clamp(min=0)


def cauchy_q(a: Tensor, z: Tensor) -> Tensor:
    """q(a_i, z_j) = 1 / (1 + |a_i - z_j|^2) for every pair, outside autograd: (B, 2), (M, 2) -> (B, M). The
    same operations as ``torch.reciprocal(1 + squared_distances(a, z))`` on the same operands, so the same
    bits, but in place on one (B, M) buffer: on the free points' steps the three fresh buffers of that size
    cost a fifth of the refinement's time (docs/keeping.md)."""
    return _pair_terms(a, z).clamp_(min=0).add_(1).reciprocal_()


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


def noise_bank(seed: int, noise: float, dim: int = WIDTHS[0]) -> Tensor:
    """NOISE_ROWS rows of Gaussian noise of standard deviation ``noise``, seeded: (NOISE_ROWS, dim)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 11)
    return torch.randn((NOISE_ROWS, dim), generator=g).mul_(noise)


def noise_offsets(seed: int, epoch: int, steps: int, batch_size: int) -> list[int]:
    """Each of epoch ``epoch``'s steps takes the bank's rows from its offset on, one per anchor; seeded by
    (seed, epoch), so a resumed run draws what an unbroken one draws. A run of rows costs no copy, and
    anchors come in a fresh order every epoch, so which image meets which row changes with the epoch."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 13)
    return torch.randint(0, NOISE_ROWS - batch_size + 1, (steps,), generator=g).tolist()


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
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a GEMM's or a sum's bits can depend on its thread count; the result must not
    try:
        model, optim, ck = _start(x, cfg, resume)
        ck = _epochs(model, optim, ck, x, nbr, cfg, on_epoch_end)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model, ck


def _start(x: Tensor, cfg: KeepConfig,
           resume: Checkpoint | None) -> tuple[KeepingEncoder, torch.optim.Optimizer, Checkpoint]:
    """The encoder, its optimizer and its checkpoint before the next epoch: fresh (the seeded initial
    weights, centred on ``x``'s mean image) or from ``resume`` (whose state holds its center; one stored
    before the center existed resumes on the image as it is)."""
    model = initial_encoder(cfg.seed, x.shape[1])
    if resume is None:
        model.center.copy_(mean_image(x))
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
    return model, optim, ck


def _epochs(model: KeepingEncoder, optim: torch.optim.Optimizer, ck: Checkpoint, x: Tensor, nbr: Tensor,
            cfg: KeepConfig, on_epoch_end: Callable[[Checkpoint], None] | None) -> Checkpoint:
    n = x.shape[0]
    fast = _compiled_step(model, optim, x, cfg)  # None until the optimizer has its state (a resume has it)
    bank = noise_bank(cfg.seed, cfg.noise, x.shape[1]).to(x.device) if cfg.noise > 0 else None
    none = torch.empty(0, x.shape[1], device=x.device)
    for epoch in range(ck.epoch + 1, cfg.epochs + 1):
        order = epoch_order(n, cfg.seed, epoch)
        positive = draw_positives(nbr, torch.arange(n), cfg.positives_at(epoch), cfg.seed, epoch)  # (N,): this epoch's
        offsets = None if bank is None else noise_offsets(cfg.seed, epoch, -(-n // cfg.batch_size), cfg.batch_size)
        total, steps = 0.0, 0
        for b0 in range(0, n, cfg.batch_size):
            a = order[b0 : b0 + cfg.batch_size]
            if a.shape[0] < 2:
                continue  # one anchor has no negative
            ids = torch.cat([a, positive[a]])
            o = None if offsets is None else offsets[b0 // cfg.batch_size]
            noise = none if o is None else bank[o : o + a.shape[0]]
            if fast is not None:  # the whole step in one call: the same kernels on the same operands
                loss = fast(ids, a.shape[0], noise)
            else:
                z = model.encoder(_batch(x, ids, a.shape[0], model.center, noise))
                loss = keep_loss(z[: a.shape[0]], z[a.shape[0]:], cfg.loss, cfg.attraction)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
                if steps == 0:  # the first step made the optimizer's state
                    fast = _compiled_step(model, optim, x, cfg)
            total += loss.item()
            steps += 1
        ck = Checkpoint(epoch=epoch, model_state={k: v.detach().clone() for k, v in model.state_dict().items()},
                        optim_state=copy.deepcopy(optim.state_dict()), losses=[*ck.losses, total / max(1, steps)])
        if on_epoch_end is not None:
            on_epoch_end(ck)
    return ck


# The CPU's InfoNCE step as one plain function (:func:`_compiled_step` runs it compiled by TorchScript):
# the encoder's forward, the loss, the backward that autograd runs for them, written out with the same
# kernels on the same operands in the same order (so the same bits, tested), and the fused Adam kernel.
# Compiled, a step has no interpreter between its some 80 kernels: 100 epochs fit the budget of one seed
# model's 100 epochs again once those were compiled too (docs/keeping.md).


def _batch(x: Tensor, ids: Tensor, nb: int, center: Tensor, noise: Tensor) -> Tensor:
    """The encoder's input for a step: the rows ``ids`` less the center (as its forward), the first ``nb``
    (the anchors) plus ``noise`` ((nb, 784), or no rows: none)."""
    batch = x.index_select(0, ids) - center
    if noise.shape[0] > 0:
        batch.narrow(0, 0, nb).add_(noise)
    return batch


def _layers_forward(batch: Tensor, W: list[Tensor], b: list[Tensor], one: float) -> list[Tensor]:
    """[batch, each layer's output] through the encoder (nn.Linear is addmm(b, h, W.t()); ReLU but last).
    ``one`` is 1: as an argument, not a constant, it keeps TorchScript from splitting each addmm into a
    mm and an add, which rounds differently."""
    hs = [batch]
    for layer in range(len(W)):
        h = torch.addmm(b[layer], hs[-1], W[layer].t(), beta=one)
        if layer < len(W) - 1:
            h = torch.relu(h)
        hs.append(h)
    return hs


def _pow2_backward(g: Tensor, v: Tensor) -> Tensor:
    """Autograd's backward of v.square() (pow(v, 2)): g * (2 * v)."""
    return g * (v * 2)


def _infonce_backprop(batch: Tensor, nb: int, W: list[Tensor], b: list[Tensor], Wg: list[Tensor], bg: list[Tensor],
                      attraction: float, one: float = 1.0) -> Tensor:
    """:func:`keep_loss` (``infonce``) of the encoded ``batch`` (its first ``nb`` rows the anchors, the rest
    their positives) and its gradients written into ``Wg``, ``bg``, as autograd computes them."""
    hs = _layers_forward(batch, W, b, one)
    z = hs[-1]
    a, p = z[:nb], z[nb:]
    # forward, as keep_loss
    d = a - p
    s = d.square().sum(1)
    pos = torch.log1p(s)
    if attraction != 1.0:
        pos = pos * attraction
    c = torch.cat([a, p])
    m = torch.addmm(c.square().sum(1)[None, :], a, c.t(), alpha=-2).add(a.square().sum(1, keepdim=True))
    q = torch.reciprocal(1 + m.clamp(min=0))
    rest = q.sum(1) - q.diagonal()
    loss = (pos + torch.log(rest)).mean()
    # backward: mean, log, the sum and the diagonal (whose gradients cancel on the diagonal), reciprocal
    g_tot = torch.ones_like(rest) / nb
    g_rest = g_tot / rest
    g_q = torch.zeros_like(q).diagonal_scatter(-g_rest) + g_rest[:, None].expand(q.shape)
    g_m = -g_q * (q * q)
    g_m = torch.where(m > 0, g_m, torch.zeros_like(g_m))  # clamp(min=0)'s backward: 0 where m <= 0
    g_asq = g_m.sum(1, keepdim=True).expand(a.shape)  # a.square().sum(1, keepdim=True)
    g_a_mm = torch.mm(g_m, c) * -2.0
    g_c = torch.mm(g_m.t(), a) * -2.0 + _pow2_backward(g_m.sum(0)[:, None].expand(c.shape), c)
    g_s = (g_tot * attraction if attraction != 1.0 else g_tot) / (s + 1)
    g_d = _pow2_backward(g_s[:, None].expand(d.shape), d)
    g_a = ((_pow2_backward(g_asq, a) + g_a_mm) + g_c[:nb]) + g_d
    g_p = g_c[nb:] + -g_d
    g = torch.cat([g_a, g_p])
    for layer in range(len(W) - 1, -1, -1):
        torch.mm(g.t(), hs[layer], out=Wg[layer])
        torch.sum(g, [0], out=bg[layer])
        if layer > 0:
            g = torch.ops.aten.threshold_backward(torch.mm(g, W[layer]), hs[layer], 0)
    return loss


def _infonce_step(x: Tensor, ids: Tensor, nb: int, center: Tensor, noise: Tensor, W: list[Tensor],
                  b: list[Tensor], Wg: list[Tensor], bg: list[Tensor], attraction: float, params: list[Tensor],
                  grads: list[Tensor], avgs: list[Tensor], sqs: list[Tensor], steps: list[Tensor], lr: float,
                  beta1: float, beta2: float, weight_decay: float, eps: float, one: float = 1.0) -> Tensor:
    """One whole step: the batch (:func:`_batch`), :func:`_infonce_backprop`, the fused Adam step (as
    ``optim.step`` calls it). Returns the batch's loss."""
    loss = _infonce_backprop(_batch(x, ids, nb, center, noise), nb, W, b, Wg, bg, attraction, one)
    torch._foreach_add_(steps, 1)
    torch.ops.aten._fused_adam_(params, grads, avgs, sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                                weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
    return loss


def _compiled_step(model: KeepingEncoder, optim: torch.optim.Optimizer, x: Tensor,
                   cfg: KeepConfig) -> Callable[[Tensor, int, Tensor], Tensor] | None:
    """``step(ids, anchors, noise)``: :func:`_infonce_step` compiled, over the encoder's tensors; None while the
    optimizer has no state (its first step makes it), for the ``neg`` loss, or where nothing compiles."""
    adam = fused_adam_args(optim)
    if cfg.loss != "infonce" or adam is None or x.device.type != "cpu":
        return None
    step = compiled(_infonce_step)
    if step is None:  # pragma: no cover - a torch without TorchScript
        return None
    linears = [m for m in model.encoder if isinstance(m, torch.nn.Linear)]
    W, b = [m.weight for m in linears], [m.bias for m in linears]
    if any(p.grad is None for p in [*W, *b]):
        return None
    args = dict(adam, params=[p.detach() for p in adam["params"]], grads=[p.grad for p in adam["params"]],
                center=model.center, W=[w.detach() for w in W], b=[v.detach() for v in b],
                Wg=[w.grad for w in W], bg=[v.grad for v in b], attraction=float(cfg.attraction))

    def fast(ids: Tensor, nb: int, noise: Tensor) -> Tensor:
        with torch.no_grad():
            return step(x, ids, nb, noise=noise, **args)

    return fast


# The map's refinement. The encoder lays out the clusters and each sample's rough place, but a 784-128-64-12-2
# function draws each sample's nearest few beside it only so far (score@10 0.065, and 0.074 after 400 epochs);
# the same loss on free 2-D points, started from the encoder's codes, moves each training sample the rest of
# the way (docs/keeping.md). Each step's gradient is written out (a step is a few small
# matrix products on 2B rows: no autograd), and Adam updates only the rows of the batch, as SparseAdam does.


def refine_step(z: Tensor, ids: Tensor, nb: int, attraction: float) -> tuple[Tensor, Tensor, Tensor]:
    """keep_loss (``infonce``) of the free codes ``z[ids]`` (the first ``nb`` the anchors, the rest their
    positives) and its gradient, by hand: (loss, unique rows, their summed gradient (U, 2))."""
    c = z.index_select(0, ids)
    a, p = c[:nb], c[nb:]
    d = a - p
    s = d.square().sum(1)
    q = cauchy_q(a, c)  # (B, 2B)
    q.diagonal().zero_()  # the anchor itself is no candidate
    rest = q.sum(1)
    loss = (torch.log1p(s) * attraction + torch.log(rest)).mean()
    w = q.square_().mul_(rest.reciprocal().mul_(-1.0 / nb)[:, None])  # d loss / d |a_i - c_j|^2
    g = torch.mm(w.t(), a).sub_(c * w.sum(0)[:, None]).mul_(-2.0)  # each candidate's part as c_j
    g[:nb] += (a * w.sum(1, keepdim=True) - torch.mm(w, c)).mul_(2.0)  # each anchor's part as a_i
    pull = d.mul_((2.0 * attraction / nb) / (1 + s)[:, None])
    g[:nb] += pull
    g[nb:] -= pull
    rows, inv = torch.unique(ids, return_inverse=True)
    return loss, rows, torch.zeros(rows.shape[0], 2, dtype=g.dtype).index_add_(0, inv, g)


def keep_map(model: KeepingEncoder, x: Tensor, nbr: np.ndarray | Tensor, cfg: KeepConfig,
             points: np.ndarray | None = None, distance: str = "l2") -> np.ndarray:
    """relu_keep's codes of ``x``: the encoder's, then (``cfg.refine_epochs`` > 0) refined by ``cfg.refiner``:
    ``tsne`` over ``points`` (the samples as stored, whose exact ``distance`` table ``nbr`` is) with
    refining.refine_map, ``infonce`` with :func:`refine`."""
    codes = encode(model, x).numpy()
    if not cfg.refine_epochs:
        return codes
    if cfg.refiner == "infonce":
        return refine(codes, nbr, cfg, cfg.refine_epochs, cfg.refine_lr)[0]
    from common.compute.refining import refine_map

    if points is None:
        raise ValueError("the tsne refiner needs the samples (points) whose table nbr is")
    return refine_map(codes, points, np.asarray(nbr), distance)


def refine(codes: np.ndarray | Tensor, nbr: np.ndarray | Tensor, cfg: KeepConfig, epochs: int,
           lr: float = REFINE_LR) -> tuple[np.ndarray, list[float]]:
    """The codes ((N, 2), the encoder's) moved as free points under the same loss at pull weight 1, the
    positives narrowing from ``cfg.positives`` to ``cfg.final_positives`` over ``epochs`` epochs of
    ``cfg.batch_size`` anchors, Adam (``lr``) on each step's rows only; seeded by ``cfg.seed``, on one
    thread. Returns the refined codes (float32) and each epoch's mean loss."""
    z = torch.tensor(np.asarray(codes), dtype=torch.float32)
    nbr = _table(nbr, z.shape[0], cfg.columns)
    sched = KeepConfig(epochs=max(1, epochs), positives=cfg.positives, final_positives=cfg.final_positives)
    every = torch.arange(z.shape[0])
    m1, m2, t = torch.zeros_like(z), torch.zeros_like(z), 0
    losses = []
    for _, order, positive in _free_epochs(z.shape[0], cfg, epochs, lambda e: draw_positives(
            nbr, every, sched.positives_at(e), cfg.seed, e + REFINE_SEED)):
        total, steps = 0.0, 0
        for b0 in range(0, z.shape[0], cfg.batch_size):
            a = order[b0 : b0 + cfg.batch_size]
            if a.shape[0] < 2:
                continue
            loss, rows, g = refine_step(z, torch.cat([a, positive[a]]), a.shape[0], 1.0)
            t += 1
            _adam_rows(z, m1, m2, rows, g, t, lr)
            total += float(loss)
            steps += 1
        losses.append(total / max(1, steps))
    return z.numpy(), losses


def _free_epochs(n: int, cfg: KeepConfig, epochs: int,
                 positives: Callable[[int], Tensor]) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(epoch, its order of the n free points, each point's positive: ``positives(epoch)``) for ``epochs``
    epochs, the order seeded by ``cfg.seed`` apart from the encoder's; the caller's steps run on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for epoch in range(1, epochs + 1):
            yield epoch, epoch_order(n, cfg.seed, epoch + REFINE_SEED), positives(epoch)
    finally:
        torch.set_num_threads(threads)


def _table(nbr: np.ndarray | Tensor, n: int, columns: int) -> Tensor:
    """``nbr`` as a (n, K) id tensor, refused unless K >= ``columns``."""
    nbr = torch.as_tensor(np.asarray(nbr), dtype=torch.long)
    if nbr.ndim != 2 or nbr.shape[0] != n or nbr.shape[1] < columns:
        raise ValueError(f"need a ({n}, >= {columns}) neighbour table, got {tuple(nbr.shape)}")
    return nbr


def _adam_rows(z: Tensor, m1: Tensor, m2: Tensor, rows: Tensor, g: Tensor, t: int, lr: float) -> None:
    """Adam's step ``t`` (betas 0.9, 0.999, eps 1e-8) on the rows ``rows`` of ``z`` only, with their gradient
    ``g``; the moments ``m1``, ``m2`` of other rows are left as they are (as SparseAdam does)."""
    b1, b2, eps = 0.9, 0.999, 1e-8
    mu = m1.index_select(0, rows).mul_(b1).add_(g, alpha=1 - b1)
    nu = m2.index_select(0, rows).mul_(b2).addcmul_(g, g, value=1 - b2)
    m1.index_copy_(0, rows, mu)
    m2.index_copy_(0, rows, nu)
    z.index_add_(0, rows, mu.div_(nu.sqrt_().add_(eps)), alpha=-lr * (1 - b2**t) ** 0.5 / (1 - b1**t))


def place_step(y: Tensor, pos: Tensor, others: Tensor) -> tuple[Tensor, Tensor]:
    """keep_loss (``infonce``, pull weight 1) of new codes ``y`` (B, 2) against fixed codes: each row's
    positive ``pos`` (B, 2), the other candidates every other positive and ``others`` (R, 2). Returns the
    loss and its gradient in ``y``, by hand."""
    nb = y.shape[0]
    c = torch.cat([pos, others])
    d = y - pos
    s = d.square().sum(1)
    q = cauchy_q(y, c)
    rest = q.sum(1)
    loss = (torch.log1p(s) + torch.log(rest)).mean()
    w = q.square_().mul_(rest.reciprocal().mul_(-1.0 / nb)[:, None])
    g = (y * w.sum(1, keepdim=True) - torch.mm(w, c)).mul_(2.0)
    g += d.mul_((2.0 / nb) / (1 + s)[:, None])
    return loss, g


def place_positives(nbr: np.ndarray | Tensor, n_map: int, m: int) -> tuple[Tensor, Tensor]:
    """Each unseen sample's positives, as (ptr (M + 1,), ids): sample i's are ids[ptr[i]:ptr[i + 1]], ids into
    the map's ``n_map`` rows and then the M unseen ones. They are its first ``m`` neighbours in ``nbr``
    ((M, K), nearest first) and every unseen sample that lists it among its own first ``m``: among unseen
    samples the pull goes both ways, as among the map's (where an anchor's positive is pulled towards it
    too); a map row does not move, so it pulls only the samples it is listed by. Each pair once."""
    nbr = _table(nbr, np.asarray(nbr).shape[0], m)[:, :m]
    rows = nbr.shape[0]
    src = torch.arange(rows).repeat_interleave(m)
    dst = nbr.reshape(-1)
    back = dst >= n_map  # an unseen neighbour: the pull back to the sample that listed it
    src, dst = torch.cat([src, dst[back] - n_map]), torch.cat([dst, src[back] + n_map])
    pairs = torch.unique(src * (n_map + rows) + dst)  # sorted by sample, then by id
    ptr = torch.zeros(rows + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.bincount(pairs // (n_map + rows), minlength=rows), 0)
    return ptr, pairs % (n_map + rows)


def draw_among(ptr: Tensor, ids: Tensor, seed: int, epoch: int) -> Tensor:
    """One of each sample's positives (``place_positives``), uniformly, seeded by (seed, epoch): (M,) ids."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
    count = ptr[1:] - ptr[:-1]
    col = (torch.rand(count.shape[0], generator=g, dtype=torch.float64) * count).long()
    return ids[ptr[:-1] + torch.minimum(col, count - 1)]


def map_start(reference: np.ndarray | Tensor, nbr: np.ndarray | Tensor, positives: int = PLACE_POSITIVES
              ) -> np.ndarray:
    """Where :func:`place` starts each unseen sample on a refined map: the median (per coordinate) of the map
    codes ``reference`` (N, 2) of its map neighbours among its first ``positives`` in ``nbr`` ((M, K) ids into
    the map's N rows, then the unseen ones). One with none there (all unseen) starts where its nearest
    unseen neighbour with a start does, else at the map's median. The refinement moves the encoder's codes
    far from where the encoder put them, so a start from the encoder's code would begin in the wrong place.
    (M, 2) float32."""
    ref = np.asarray(reference, np.float64)
    ids = np.asarray(nbr)[:, :positives].astype(np.int64)
    n = len(ref)
    known = ids < n
    start = np.full((len(ids), 2), np.nan)
    some = known.any(1)
    if some.any():
        near = np.vstack([ref, [[np.nan, np.nan]]])[np.where(known, ids, n)[some]]
        start[some] = np.nanmedian(near, axis=1)
    for _ in range(len(ids)):  # the unplaced take an unseen neighbour's start, nearest first
        todo = np.flatnonzero(np.isnan(start[:, 0]))
        if not len(todo):
            break
        moved = False
        for i in todo:
            for j in ids[i]:
                if j >= n and not np.isnan(start[j - n, 0]):
                    start[i], moved = start[j - n], True
                    break
        if not moved:
            start[todo] = np.median(ref, axis=0)
    return start.astype(np.float32)


def place(codes: np.ndarray | Tensor, reference: np.ndarray | Tensor, nbr: np.ndarray | Tensor, cfg: KeepConfig,
          epochs: int, lr: float = REFINE_LR, positives: int = PLACE_POSITIVES) -> np.ndarray:
    """Unseen samples onto a refined map: their starts ``codes`` (M, 2; :func:`map_start`) moved as free points under
    the same loss against the map's fixed codes ``reference`` (N, 2), each pulled towards one of its
    positives (:func:`place_positives`: its first ``positives`` neighbours in ``nbr`` ((M, K) ids, nearest
    first, into the map's N rows and then the M unseen ones: an unseen sample's neighbours may be training
    samples or other unseen ones) and the unseen samples that list it) and pushed from every other
    positive of its batch and as many random map samples; the map does not move. Unseen samples placed
    together so pull each other as the map's samples did; one placed alone has only the map's. Seeded by
    ``cfg.seed``, one thread. Returns (M, 2) float32."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32)
    y = torch.tensor(np.asarray(codes), dtype=torch.float32)
    ptr, ids = place_positives(_table(nbr, y.shape[0], positives), ref.shape[0], positives)
    m1, m2, t = torch.zeros_like(y), torch.zeros_like(y), 0
    for epoch, order, positive in _free_epochs(y.shape[0], cfg, epochs,
                                               lambda e: draw_among(ptr, ids, cfg.seed, e + REFINE_SEED)):
        g_others = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch + REFINE_SEED + 17)
        for b0 in range(0, y.shape[0], cfg.batch_size):
            a = order[b0 : b0 + cfg.batch_size]
            others = ref.index_select(0, torch.randint(0, ref.shape[0], (a.shape[0],), generator=g_others))
            _, g = place_step(y.index_select(0, a), torch.cat([ref, y]).index_select(0, positive[a]), others)
            t += 1
            _adam_rows(y, m1, m2, a, g, t, lr)
    return y.numpy()
