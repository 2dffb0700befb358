"""Training one autoencoder, seeded and resumable. Nothing here knows about Celery or SQL.

The trainer calls ``on_epoch_end(checkpoint)`` after every epoch; the caller stores the checkpoint
(the worker and the CLI both write it to the database) and may raise to stop. A run resumed from a
checkpoint continues exactly as if it had never stopped: each epoch's shuffle is seeded by
(seed, epoch), and the checkpoint holds the model, the Adam state and the loss history.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from common.compute.devices import resolve_device
from common.compute.models import WIDTHS, build_model, input_dim, is_autoencoder, loss_name
from common.compute.names import MODEL_NAMES

log = logging.getLogger(__name__)


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


def configure_numerics() -> None:
    """Flush subnormal floats to zero. Call at process start, before the first torch operation.

    Weight decay drives the weights and Adam moments of dead ReLU units towards zero; once they are
    subnormal every step slows down tenfold (seen here: 3 s -> 28 s per epoch by epoch 6 on full
    MNIST). The flag lives in each thread's MXCSR register and new threads inherit it, so it must be
    set before torch starts its thread pools; the CLI and the workers do so first thing.
    """
    torch.set_flush_denormal(True)


def model_seed(seed: int, name: str) -> int:
    """Each model gets its own initial weights, stable across runs."""
    return seed * 1009 + MODEL_NAMES.index(name)


def epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    """The shuffle of epoch ``epoch`` (1-based), the same for every model and on every resume."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def _linear_keys(name: str) -> list[str]:
    """The state_dict keys of the model's 8 Linear layers, in order (encoder, then decoder)."""
    model = build_model(name)
    return [k for k, m in model.named_modules() if isinstance(m, nn.Linear)]


class ModelStack(nn.Module):
    """Several autoencoders trained side by side as one set of batched matrix products.

    Model g's layer l is ``W[l][g]`` (in, out) and ``b[l][g]`` (1, out): every model keeps its own
    weights, loss and Adam state (Adam is elementwise, so one optimizer over the stacked tensors is
    the same as one per model); they only share the batch order. Linear models come first in the
    stack so that ReLU/tanh apply to one slice. On 2 CPU cores four models train in about 45 % of
    the time of four separate loops.
    """

    def __init__(self, names: list[str], states: list[dict[str, Tensor]]) -> None:
        super().__init__()
        self.names = list(names)
        self.n_linear = sum(1 for n in names if not n.startswith("relu"))
        if any(n.startswith("relu") for n in names[: self.n_linear]):
            raise ValueError("linear models must come before ReLU models in a stack")
        keys = [_linear_keys(n) for n in names]
        self.W = nn.ParameterList(
            nn.Parameter(torch.stack([st[k[layer] + ".weight"].T for st, k in zip(states, keys, strict=True)]))
            for layer in range(8))  # (G, in, out)
        self.b = nn.ParameterList(
            nn.Parameter(torch.stack([st[k[layer] + ".bias"][None, :] for st, k in zip(states, keys, strict=True)]))
            for layer in range(8))  # (G, 1, out)
        self.register_buffer("l1", torch.tensor([loss_name(n) == "l1" for n in names]))
        losses = {loss_name(n) for n in names}
        self.loss = next(iter(losses)) if len(losses) == 1 else None  # one loss for the whole stack
        self._keys = keys

    def forward(self, x: Tensor) -> Tensor:  # (B, 784) -> (G, B, 784)
        return _activations(x, list(self.W), list(self.b), self.n_linear)[-1]

    def losses(self, x: Tensor) -> Tensor:  # (B, 784) -> (G,): each model's own loss
        return _loss_of(self(x) - x, self.loss or "", self.l1)

    @torch.no_grad()
    def losses_and_grads(self, x: Tensor) -> Tensor:  # (B, 784) -> (G,)
        """``losses(x)``, with every parameter's ``.grad`` set as ``losses(x).sum().backward()`` would.

        Backpropagation written out with the very kernels autograd calls (:func:`_backprop`), so the
        gradients are autograd's bit for bit (tested). Each gradient is written into the parameter's
        ``.grad``, made once here; the CPU's training loop runs the same function compiled
        (:func:`_cpu_step`)."""
        wg, bg = self.grads()
        return _backprop(x, list(self.W), list(self.b), wg, bg, self.n_linear, self.loss or "", self.l1)

    def grads(self) -> tuple[list[Tensor], list[Tensor]]:
        """The weights' and the biases' ``.grad`` tensors, made here the first time (then written into)."""
        for p in self.parameters():
            if p.grad is None:
                p.grad = torch.empty_like(p)
        return [w.grad for w in self.W], [b.grad for b in self.b]

    def state_of(self, g: int) -> dict[str, Tensor]:
        """Model g's weights as its own ``build_model(name)`` state_dict."""
        out: dict[str, Tensor] = {}
        for layer, key in enumerate(self._keys[g]):
            out[key + ".weight"] = self.W[layer][g].detach().T.contiguous().cpu()
            out[key + ".bias"] = self.b[layer][g, 0].detach().clone().cpu()
        return out


# The step's arithmetic as plain functions over the stack's tensors, written so that TorchScript compiles
# them as they are (:func:`_cpu_step`): the CPU's training loop runs them compiled, everything else
# (tests, the GPU's graph) runs them as Python. Either way the same kernels on the same operands.


def _activations(x: Tensor, W: list[Tensor], b: list[Tensor], nl: int) -> list[Tensor]:
    """[input of layer 0, ..., input of layer 7, output] of the stack (models ``nl``.. are ReLU)."""
    g = W[0].shape[0]
    hs = [x.expand(g, x.shape[0], x.shape[1])]
    for layer in range(8):
        h = torch.baddbmm(b[layer], hs[-1], W[layer])
        if layer != 3 and nl < g:  # no activation on the code
            r = h[nl:]
            if layer == 7:
                r.tanh_()
            else:
                r.relu_()
        hs.append(h)
    return hs


def _loss_of(diff: Tensor, loss: str, l1: Tensor) -> Tensor:  # (G, B, 784) -> (G,)
    if loss == "l1":  # one loss for the whole stack (training_groups): compute only that one
        return diff.abs().mean([1, 2])
    if loss == "mse":
        return diff.square().mean([1, 2])
    return torch.where(l1, diff.abs().mean([1, 2]), diff.square().mean([1, 2]))


def _backprop(x: Tensor, W: list[Tensor], b: list[Tensor], Wg: list[Tensor], bg: list[Tensor], nl: int, loss: str,
              l1: Tensor) -> Tensor:
    """Each model's loss on batch ``x`` (G,); its gradients written into ``Wg`` and ``bg``, as autograd
    computes them (``tanh_backward``, ``threshold_backward``, the same ``bmm`` operands), and the
    backward kernels write over their own input: no graph, no clones, no fresh buffers."""
    act = nl < W[0].shape[0]
    hs = _activations(x, W, b, nl)
    y = hs.pop()  # (G, B, 784)
    diff = y - x
    n = x.numel()
    out = _loss_of(diff, loss, l1)
    # d mean|d| = sgn(d) / n and d mean(d^2) = d * (2 / n), rounded as autograd rounds them
    if loss == "l1":  # diff is not needed again: written over
        g = diff.sgn_().div_(n)
    elif loss == "mse":
        g = diff.mul_(2.0 / n)
    else:
        g = torch.where(l1[:, None, None], diff.sgn().div_(n), diff.mul(2.0 / n))
    if act:
        torch.ops.aten.tanh_backward(g[nl:], y[nl:], grad_input=g[nl:])
    for layer in range(7, -1, -1):
        torch.bmm(hs[layer].transpose(1, 2), g, out=Wg[layer])
        torch.sum(g, [1], True, out=bg[layer])
        if layer > 0:
            g = torch.bmm(g, W[layer].transpose(1, 2))
            if act and layer - 1 != 3:
                torch.ops.aten.threshold_backward(g[nl:], hs[layer][nl:], 0, grad_input=g[nl:])
    return out


def _train_step(x: Tensor, ids: Tensor, W: list[Tensor], b: list[Tensor], Wg: list[Tensor], bg: list[Tensor],
                nl: int, loss: str, l1: Tensor, params: list[Tensor], grads: list[Tensor], avgs: list[Tensor],
                sqs: list[Tensor], steps: list[Tensor], lr: float, beta1: float, beta2: float, weight_decay: float,
                eps: float, total: Tensor) -> None:
    """One whole CPU step of a stack: gather the batch, :func:`_backprop`, the fused Adam step (as
    :func:`_fused_step` calls it), and add the losses to ``total``."""
    batch = x.index_select(0, ids)
    out = _backprop(batch, W, b, Wg, bg, nl, loss, l1)
    torch._foreach_add_(steps, 1)
    torch.ops.aten._fused_adam_(params, grads, avgs, sqs, [], steps, lr=lr, beta1=beta1, beta2=beta2,
                                weight_decay=weight_decay, eps=eps, amsgrad=False, maximize=False)
    total.add_(out)


def _cpu_step() -> Callable[..., None] | None:
    """:func:`_train_step` compiled by TorchScript, or None where this torch cannot compile it.

    Compiled, a step is one call that releases the GIL for all of its some 100 kernels: no interpreter
    between them, nothing for the other stack's thread to wait on (bench/train_step.py on a 2-core AMD
    EPYC Zen 3: both stacks side by side 3.97 s an epoch as Python, 3.24 s compiled). The kernels and
    operands are the same, so are the bits (tested against the Python step)."""
    return compiled(_train_step)


def compiled(fn: Callable[..., object]) -> Callable[..., object] | None:
    """``fn`` compiled by TorchScript (once per process), or None where this torch cannot compile it.
    TorchScript is deprecated from torch 2.14 on: its warning is silenced here, and where it is gone the
    callers run ``fn`` as Python, on the same bits."""
    with _COMPILING:  # the stacks' threads ask at once; the warnings filter is the process's
        return _compile(fn)


_COMPILING = threading.Lock()


@functools.cache
def _compile(fn: Callable[..., object]) -> Callable[..., object] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.script(fn)
    except Exception as exc:  # pragma: no cover - a torch without TorchScript
        log.warning("%s runs as Python: TorchScript could not compile it (%s)", fn.__name__, exc)
        return None


def _make_adam(stack: ModelStack, cfg: TrainConfig) -> torch.optim.Adam:
    params = [*stack.W, *stack.b]
    try:  # the fused kernel is about 1.4x faster per step on the CPU
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
    except (RuntimeError, TypeError):  # pragma: no cover - older torch without fused CPU Adam
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def fused_adam_args(optim: torch.optim.Optimizer) -> dict | None:
    """The fused Adam kernel's arguments for ``optim`` (its tensors, as lists, and its settings), or None
    unless it is a plain fused Adam over CPU tensors that all have their state (after its first step).
    Gather them again after the optimizer's state is replaced (a resume)."""
    if type(optim) is not torch.optim.Adam or len(optim.param_groups) != 1:
        return None
    group = optim.param_groups[0]
    params = list(group["params"])
    plain = not (group.get("amsgrad") or group.get("maximize") or group.get("capturable")
                 or group.get("differentiable") or group.get("decoupled_weight_decay"))
    if not (group.get("fused") and plain and all(p.device.type == "cpu" and p in optim.state for p in params)):
        return None
    states = [optim.state[p] for p in params]
    beta1, beta2 = group["betas"]
    return dict(params=params, avgs=[s["exp_avg"] for s in states], sqs=[s["exp_avg_sq"] for s in states],
                steps=[s["step"] for s in states], lr=group["lr"], beta1=beta1, beta2=beta2,
                weight_decay=group["weight_decay"], eps=group["eps"])


def _fused_step(optim: torch.optim.Optimizer) -> Callable[[], None]:
    """``optim.step`` for the CPU's fused Adam, without its Python around the kernel: the step counts
    raised by one, then the same ``_fused_adam_`` call on the same tensors (tested bit for bit). Any
    other optimizer, or one with no state yet, keeps ``step``."""
    a = fused_adam_args(optim)
    if a is None:
        return optim.step
    params, avgs, sqs, steps = a["params"], a["avgs"], a["sqs"], a["steps"]
    kw = dict(amsgrad=False, lr=a["lr"], beta1=a["beta1"], beta2=a["beta2"], weight_decay=a["weight_decay"],
              eps=a["eps"], maximize=False, grad_scale=None, found_inf=None)

    def step() -> None:
        grads = [p.grad for p in params]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, avgs, sqs, [], steps, **kw)

    return step


def _adam_slice(optim: torch.optim.Adam, stack: ModelStack, g: int) -> dict:
    """Model g's part of the Adam state: its step count and moments, parameter by parameter."""
    params = [*stack.W, *stack.b]
    st = [optim.state.get(p, {}) for p in params]
    if not st[0]:
        return {"step": 0, "exp_avg": [], "exp_avg_sq": []}
    return {"step": int(st[0]["step"]),
            "exp_avg": [s["exp_avg"][g].detach().cpu().clone() for s in st],
            "exp_avg_sq": [s["exp_avg_sq"][g].detach().cpu().clone() for s in st]}


def _adam_load(optim: torch.optim.Adam, stack: ModelStack, slices: list[dict]) -> None:
    if slices[0]["step"] == 0:
        return
    params = [*stack.W, *stack.b]
    dev = params[0].device
    for i, p in enumerate(params):
        optim.state[p] = {
            "step": torch.tensor(float(slices[0]["step"]), dtype=torch.float32, device=dev),
            "exp_avg": torch.stack([s["exp_avg"][i] for s in slices]).to(dev),
            "exp_avg_sq": torch.stack([s["exp_avg_sq"][i] for s in slices]).to(dev),
        }


def initial_state(name: str, seed: int, dim: int = WIDTHS[0]) -> dict[str, Tensor]:
    """The model's seeded initial weights (PyTorch's default Linear init), for data of ``dim`` values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_seed(seed, name))
        return build_model(name, dim).state_dict()


def training_groups(names: list[str]) -> list[list[str]]:
    """The stacks the models train in: one per loss (L1, MSE), linear models first in each.

    Fixed by the names alone, never by the machine: a model's bits depend on the stack it is in."""
    ordered = sorted(names, key=lambda n: (n.startswith("relu"), MODEL_NAMES.index(n)))
    groups = [[n for n in ordered if loss_name(n) == loss] for loss in ("l1", "mse")]
    return [g for g in groups if g]


class _Group:
    """One stack of models, its optimizer and its running epoch; trained by one thread."""

    def __init__(self, names: list[str], states: list[dict[str, Tensor]], cfg: TrainConfig, dev: torch.device,
                 resume: dict[str, Checkpoint] | None) -> None:
        self.names = names
        self.stack = ModelStack(names, states).to(dev)
        self.optim = _make_adam(self.stack, cfg)
        if resume is not None:
            _adam_load(self.optim, self.stack, [resume[n].optim_state for n in names])
        self.means: list[float] = []

    def epoch(self, x: Tensor, order: Tensor, batch_size: int) -> None:
        configure_numerics()  # this thread's MXCSR: subnormals flushed here too
        total = torch.zeros(len(self.names), device=x.device, dtype=torch.float64)
        batches = 0
        fast = self._compiled_step(x, total)  # None until the optimizer has its state
        step = _fused_step(self.optim)  # optim.step until the optimizer has its state
        with torch.no_grad():
            for b0 in range(0, order.shape[0], batch_size):
                ids = order[b0 : b0 + batch_size]
                if fast is not None:
                    fast(ids)  # the whole step, compiled: the GIL released throughout
                else:  # the Python step: gather (on this stack's thread), gradients, Adam, sum
                    total += self.stack.losses_and_grads(x.index_select(0, ids))  # each model's own loss
                    step()
                    if batches == 0:  # the first step made the optimizer's state
                        fast, step = self._compiled_step(x, total), _fused_step(self.optim)
                batches += 1
        self.means = (total / batches).tolist()

    def _compiled_step(self, x: Tensor, total: Tensor) -> Callable[[Tensor], None] | None:
        """``step(ids)``: :func:`_train_step` compiled, over this stack's tensors; None while the optimizer
        has no state (its own first step makes it) or where there is no compiled step."""
        step, adam = _cpu_step(), fused_adam_args(self.optim)
        if step is None or adam is None or x.device.type != "cpu":
            return None
        st = self.stack
        wg, bg = st.grads()
        args = dict(W=list(st.W), b=list(st.b), Wg=wg, bg=bg, nl=st.n_linear, loss=st.loss or "", l1=st.l1,
                    grads=[p.grad for p in adam["params"]], **adam)
        return lambda ids: step(x, ids, total=total, **args)


class _GraphGroup(_Group):
    """All models in one stack, each step one CUDA graph replay (on a CPU, the same steps run eagerly:
    that is how the step is tested without a GPU).

    The step (gather the batch from a device-side permutation, forward, the hand-written backward, a
    fused Adam, add the losses to a device-side sum) is captured once and replayed for every full batch:
    a step is a few dozen kernels with no Python between them, where eager PyTorch spends most of a
    step waiting on Python. The first WARMUP steps run eagerly (they are real training steps: they set
    up cuBLAS and the optimizer's state); the rest replay the graph. Losses are read once per epoch. A
    last partial batch (N not a multiple of the batch size) runs eagerly.
    """

    WARMUP = 3

    def __init__(self, names: list[str], states: list[dict[str, Tensor]], cfg: TrainConfig, dev: torch.device,
                 resume: dict[str, Checkpoint] | None, n: int) -> None:
        self.names = names
        self.cuda = dev.type == "cuda"
        self.stack = ModelStack(names, states).to(dev)
        params = [*self.stack.W, *self.stack.b]
        self.optim = (torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True, capturable=True)
                      if self.cuda else _make_adam(self.stack, cfg))
        if resume is not None:
            _adam_load(self.optim, self.stack, [resume[nm].optim_state for nm in names])
        self.means: list[float] = []
        self.batch = cfg.batch_size
        self.perm = torch.zeros(n, dtype=torch.long, device=dev)  # this epoch's order, copied in each epoch
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # the next batch's offset in perm
        self.offsets = torch.arange(self.batch, device=dev)
        self.total = torch.zeros(len(names), dtype=torch.float64, device=dev)  # sum of batch losses
        self.graph = None  # torch.cuda.CUDAGraph once captured
        self.eager_steps = 0

    def _step(self, x: Tensor) -> None:
        ids = self.perm.index_select(0, self.pos + self.offsets)  # (B,) sample ids of this batch
        loss = self.stack.losses_and_grads(x.index_select(0, ids))  # (G,)
        self.optim.step()
        self.total.add_(loss)
        self.pos.add_(self.batch)

    def epoch(self, x: Tensor, order: Tensor, batch_size: int) -> None:
        n, b = order.shape[0], self.batch
        self.perm.copy_(order)
        self.pos.zero_()
        self.total.zero_()
        full, done = n // b, 0
        if self.graph is None:
            side = torch.cuda.Stream(x.device) if self.cuda else None
            if side is not None:
                side.wait_stream(torch.cuda.current_stream(x.device))
            with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
                while done < full and (not self.cuda or self.eager_steps < self.WARMUP):
                    self._step(x)
                    done += 1
                    self.eager_steps += 1
            if side is not None:
                torch.cuda.current_stream(x.device).wait_stream(side)
            if done < full:
                self.graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graph):  # recorded, not run
                    self._step(x)
        for _ in range(full - done):
            self.graph.replay()
        if n % b:  # the last, partial batch, eagerly
            loss = self.stack.losses_and_grads(x.index_select(0, order[full * b:]))
            self.optim.step()
            self.total.add_(loss)
        self.means = (self.total / (full + (1 if n % b else 0))).tolist()  # one read per epoch


def train_group(
    names: list[str],
    x: Tensor,
    cfg: TrainConfig,
    *,
    recon_ids: list[int],
    device: str = "cpu",
    resume: dict[str, Checkpoint] | None = None,
    on_epoch_end: Callable[[dict[str, Checkpoint]], None] | None = None,
) -> dict[str, Checkpoint]:
    """Train the models ``names`` side by side on ``x`` ((N, 784) in [-1, 1]) for ``cfg.epochs`` epochs.

    On the CPU the models train in stacks (:func:`training_groups`), each stack on one thread and the
    stacks at the same time: on 2 cores two stacks of two run 1.3x faster than one stack of four on both
    cores, and a result never depends on the thread count. On CUDA they train as one stack whose every
    step is one CUDA graph replay (:class:`_GraphGroup`); a GPU rounds differently, so its numbers are
    its own (deterministic run to run on one GPU). ``resume`` holds each model's last checkpoint (all
    at the same epoch). ``on_epoch_end`` gets every model's checkpoint after each epoch. Returns the
    final checkpoints, by name.
    """
    other = [n for n in names if not is_autoencoder(n)]
    if other:
        raise ValueError(f"{other} are not autoencoders: common/compute/keeping.py trains them")
    dev = resolve_device(device)
    configure_numerics()  # this thread at least; see there for the others
    start = {n: resume[n] for n in names} if resume else None
    if start is not None and len({c.epoch for c in start.values()}) != 1:
        raise ValueError(f"checkpoints at different epochs: { {n: c.epoch for n, c in start.items()} }")
    states = {n: start[n].model_state if start else initial_state(n, cfg.seed, x.shape[1]) for n in names}
    if dev.type == "cuda":  # one stack of all the models, one stream, one CUDA graph per step
        stack = sorted(names, key=lambda nm: (nm.startswith("relu"), MODEL_NAMES.index(nm)))
        groups: list[_Group] = [_GraphGroup(stack, [states[nm] for nm in stack], cfg, dev, start, x.shape[0])]
    else:
        groups = [_Group(g, [states[n] for n in g], cfg, dev, start) for g in training_groups(names)]
    ckpts = start or {n: Checkpoint(epoch=0, model_state=states[n], optim_state={"step": 0}) for n in names}
    xd = x.to(dev)
    n = xd.shape[0]
    recon_at = min(cfg.recon_epoch, cfg.epochs)
    first = next(iter(ckpts.values())).epoch
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(len(groups), thread_name_prefix="aeknn-train") if len(groups) > 1 else None
    if dev.type == "cpu":
        torch.set_num_threads(1)  # one thread per stack: a GEMM's bits can depend on its thread count
    try:
        for epoch in range(first + 1, cfg.epochs + 1):
            order = epoch_order(n, cfg.seed, epoch).to(dev)
            if pool is None:
                groups[0].epoch(xd, order, cfg.batch_size)
            else:
                k = len(groups)
                list(pool.map(_Group.epoch, groups, [xd] * k, [order] * k, [cfg.batch_size] * k))
            recon = {}
            if epoch == recon_at:
                with torch.no_grad():
                    for grp in groups:
                        out = grp.stack(xd[recon_ids]).cpu()  # (G, R, 784)
                        recon.update({name: out[i].clone() for i, name in enumerate(grp.names)})
            ckpts = {
                name: Checkpoint(
                    epoch=epoch,
                    model_state=grp.stack.state_of(i),
                    optim_state=_adam_slice(grp.optim, grp.stack, i),
                    losses=[*ckpts[name].losses, grp.means[i]],
                    reconstructions=recon.get(name, ckpts[name].reconstructions),
                    recon_epoch=epoch if name in recon else ckpts[name].recon_epoch,
                )
                for grp in groups for i, name in enumerate(grp.names)
            }
            if on_epoch_end is not None:
                on_epoch_end(ckpts)
    finally:
        torch.set_num_threads(threads)
        if pool is not None:
            pool.shutdown()
    return {name: ckpts[name] for name in names}


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
    """One model alone: returns the trained model (CPU, eval mode) and its final checkpoint."""
    hook = (lambda cks: on_epoch_end(cks[name])) if on_epoch_end is not None else None
    ck = train_group([name], x, cfg, recon_ids=recon_ids, device=device,
                     resume={name: resume} if resume is not None else None, on_epoch_end=hook)[name]
    return load_trained(name, ck.model_state), ck


@torch.no_grad()
def encode(model: nn.Module, x: Tensor, batch_size: int = 10_000) -> Tensor:
    """The 2-D code of every row of ``x``: (N, 784) -> (N, 2) float32 on the CPU.

    On the CPU this runs on one thread: a GEMM's last bit can depend on how many threads share it,
    and the codes must not depend on the machine's or the worker's thread count (it is ~0.2 s).
    """
    dev = next(model.parameters()).device
    model.eval()
    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)
    try:
        out = [model.encode(x[i : i + batch_size].to(dev)).cpu() for i in range(0, x.shape[0], batch_size)]
    finally:
        torch.set_num_threads(threads)
    return torch.cat(out).float()


def load_trained(name: str, model_state: dict[str, Tensor]) -> nn.Module:
    model = build_model(name, input_dim(model_state))
    model.load_state_dict(model_state)
    model.eval()
    return model
