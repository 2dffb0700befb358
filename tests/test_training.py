"""Training: the four architectures, seeded determinism, checkpoints and resume."""

import pytest
import torch

from common.compute.models import build_model
from common.compute.names import SEED_MODELS as MODEL_NAMES  # the autoencoders
from common.compute.training import Checkpoint, ModelStack, TrainConfig, encode, initial_state, train, train_group
from tests.checkpoints import first_checkpoint


def test_architectures_match_the_study():
    lin, relu = build_model("linear_mse"), build_model("relu_l1")
    shapes = [tuple(m.weight.shape) for m in lin.encoder if isinstance(m, torch.nn.Linear)]
    assert shapes == [(128, 784), (64, 128), (12, 64), (2, 12)]
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.Tanh)) for m in lin.modules())
    kinds = [type(m).__name__ for m in relu.encoder]
    assert kinds == ["Linear", "ReLU", "Linear", "ReLU", "Linear", "ReLU", "Linear"]  # no activation on the code
    assert [type(m).__name__ for m in relu.decoder][-2:] == ["Linear", "Tanh"]
    x = torch.zeros(3, 784)
    assert relu.encoder(x).shape == (3, 2) and relu(x).shape == (3, 784)
    with pytest.raises(ValueError, match="unknown model 'vae'"):
        build_model("vae")


@pytest.fixture(scope="module")
def x(mnist):
    return mnist.scaled()[:500]


CFG = TrainConfig(epochs=3, batch_size=100, seed=7, recon_epoch=90)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_seeded_training_is_deterministic_and_learns(x, name):
    m1, c1 = train(name, x, CFG, recon_ids=[0, 1])
    m2, c2 = train(name, x, CFG, recon_ids=[0, 1])
    assert c1.losses == c2.losses and len(c1.losses) == 3
    assert c1.losses[-1] < c1.losses[0]
    assert torch.equal(encode(m1, x), encode(m2, x))
    assert c1.recon_epoch == 3 and c1.reconstructions.shape == (2, 784)  # fewer than 90 epochs: the last


def test_reconstructions_are_taken_at_the_reconstruction_epoch(x):
    _, ck = train("relu_mse", x, TrainConfig(epochs=3, recon_epoch=2), recon_ids=[4])
    _, ck2 = train("relu_mse", x, TrainConfig(epochs=2, recon_epoch=2), recon_ids=[4])
    assert ck.recon_epoch == 2 and torch.equal(ck.reconstructions, ck2.reconstructions)


def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(x):
    _, full = train("relu_l1", x, CFG, recon_ids=[0])
    resumed_from = first_checkpoint(lambda hook: train("relu_l1", x, CFG, recon_ids=[0], on_epoch_end=hook))
    assert resumed_from.epoch == 1
    model, ck = train("relu_l1", x, CFG, recon_ids=[0], resume=resumed_from)
    assert ck.losses == full.losses
    assert all(torch.equal(ck.model_state[k], full.model_state[k]) for k in full.model_state)
    assert torch.equal(ck.reconstructions, full.reconstructions)


def test_a_stack_computes_each_model_exactly_as_the_model_alone(x):
    names = list(MODEL_NAMES)
    states = [initial_state(n, 3) for n in names]
    stack = ModelStack(names, states)
    out = stack(x[:50])
    per = stack.losses(x[:50])
    for g, name in enumerate(names):
        alone = build_model(name)
        alone.load_state_dict(stack.state_of(g))
        assert all(torch.equal(stack.state_of(g)[k], states[g][k]) for k in states[g])
        with torch.no_grad():
            y = alone(x[:50])
        torch.testing.assert_close(out[g].detach(), y, rtol=1e-5, atol=1e-5)
        want = (y - x[:50]).abs().mean() if name.endswith("l1") else ((y - x[:50]) ** 2).mean()
        torch.testing.assert_close(per[g].detach(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("names", [["linear_l1", "relu_l1"], ["linear_mse", "relu_mse"], list(MODEL_NAMES),
                                   ["relu_mse"], ["linear_l1"]])
def test_hand_written_backprop_equals_autograd_bit_for_bit(x, names):
    """Twenty Adam steps driven by ``losses_and_grads`` land on autograd's weights to the last bit."""
    runs = []
    for hand in (False, True):
        stack = ModelStack(names, [initial_state(n, 5) for n in names])
        optim = torch.optim.Adam([*stack.W, *stack.b], lr=1e-3, weight_decay=1e-3)
        losses = []
        for step in range(20):
            batch = x[(step * 37) % 400 :][:100]
            if hand:
                loss = stack.losses_and_grads(batch)
                assert not loss.requires_grad
            else:
                optim.zero_grad(set_to_none=True)
                loss = stack.losses(batch)
                loss.sum().backward()
            grads = [p.grad.clone() for p in [*stack.W, *stack.b]]
            optim.step()
            losses.append(loss.detach())
        runs.append((torch.stack(losses), grads, [p.detach().clone() for p in [*stack.W, *stack.b]]))
    (l_auto, g_auto, p_auto), (l_hand, g_hand, p_hand) = runs
    assert torch.equal(l_auto, l_hand)
    assert all(torch.equal(a, b) for a, b in zip(g_auto, g_hand, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(p_auto, p_hand, strict=True))


def test_the_direct_fused_adam_step_equals_the_optimizers_bit_for_bit(x):
    """_Group's step calls the fused Adam kernel without Optimizer.step's Python around it: the weights,
    the moments and the step counts must come out as optim.step gives them, step after step."""
    from common.compute.training import _fused_step, _make_adam

    names = ["linear_mse", "relu_mse"]
    runs = []
    for direct in (False, True):
        stack = ModelStack(names, [initial_state(n, 2) for n in names])
        optim = _make_adam(stack, TrainConfig(weight_decay=1e-3))
        step = _fused_step(optim)
        assert step == optim.step  # no state yet: the optimizer's own step makes it
        for i in range(12):
            stack.losses_and_grads(x[(i * 41) % 400:][:100])
            step()
            if direct and i == 0:
                step = _fused_step(optim)
                assert step != optim.step
        st = [optim.state[p] for p in [*stack.W, *stack.b]]
        runs.append(([p.detach().clone() for p in [*stack.W, *stack.b]],
                     [t for s in st for t in (s["exp_avg"], s["exp_avg_sq"], s["step"])]))
    for a, b in zip(runs[0][0] + runs[0][1], runs[1][0] + runs[1][1], strict=True):
        assert torch.equal(a, b)


def plain_epoch(stack: ModelStack, optim, x, order, batch_size: int) -> list[float]:
    """The reference: an epoch of Python steps (losses_and_grads, optim.step); each model's mean loss."""
    total, batches = torch.zeros(len(stack.names), dtype=torch.float64), 0
    for b0 in range(0, x.shape[0], batch_size):
        total += stack.losses_and_grads(x.index_select(0, order[b0:b0 + batch_size]))
        optim.step()
        batches += 1
    return (total / batches).tolist()


@pytest.mark.parametrize("names", [["linear_l1", "relu_l1"], ["linear_mse", "relu_mse"], list(MODEL_NAMES)])
def test_the_compiled_cpu_step_equals_the_python_step_bit_for_bit(x, names):
    """A CPU stack's epoch runs each step as one TorchScript call (_train_step compiled): gather, the
    hand-written backward, the fused Adam, the loss sum. Two epochs of it, with a last partial batch,
    and a third from a resumed optimizer, must land on the Python step's weights, moments, step counts
    and mean losses to the last bit."""
    from common.compute.training import _adam_load, _adam_slice, _cpu_step, _Group, _make_adam, epoch_order

    assert _cpu_step() is not None  # TorchScript compiles it on the torch the project declares
    cfg = TrainConfig(batch_size=64, seed=4)  # 500 samples: 7 full batches and one of 52
    states = [initial_state(n, cfg.seed) for n in names]
    group = _Group(names, states, cfg, torch.device("cpu"), None)
    plain = ModelStack(names, states)
    optim = _make_adam(plain, cfg)
    for epoch in (1, 2, 3):
        order = epoch_order(x.shape[0], cfg.seed, epoch)
        if epoch == 3:  # as after a resume: a new group, the optimizer's state loaded, no .grad yet
            slices = [_adam_slice(group.optim, group.stack, i) for i in range(len(names))]
            group = _Group(names, [group.stack.state_of(i) for i in range(len(names))], cfg, torch.device("cpu"),
                           None)
            _adam_load(group.optim, group.stack, slices)
        assert (group._compiled_step(x, torch.zeros(len(names), dtype=torch.float64)) is None) == (epoch == 1)
        group.epoch(x, order, cfg.batch_size)
        assert group.means == plain_epoch(plain, optim, x, order, cfg.batch_size)
        for p, q in zip([*group.stack.W, *group.stack.b], [*plain.W, *plain.b], strict=True):
            assert torch.equal(p, q)
            a, b = group.optim.state[p], optim.state[q]
            assert all(torch.equal(a[k], b[k]) for k in ("exp_avg", "exp_avg_sq", "step"))


def test_group_training_resumes_exactly(x):
    names = list(MODEL_NAMES)
    full = train_group(names, x, CFG, recon_ids=[0, 1])
    kept: list[dict] = []

    def stop_after_two(cks):
        kept.append({n: ck.to_bytes() for n, ck in cks.items()})
        if len(kept) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(names, x, CFG, recon_ids=[0, 1], on_epoch_end=stop_after_two)
    resume = {n: Checkpoint.from_bytes(b) for n, b in kept[-1].items()}
    again = train_group(names, x, CFG, recon_ids=[0, 1], resume=resume)
    for n in names:
        assert again[n].losses == full[n].losses and len(full[n].losses) == 3
        assert all(torch.equal(again[n].model_state[k], full[n].model_state[k]) for k in full[n].model_state)
        assert full[n].losses[-1] < full[n].losses[0]


def test_the_one_stack_step_of_the_gpu_path_equals_a_plain_loop_on_the_cpu(x):
    """The CUDA path's step (batch ids gathered on the device from the epoch's order and a device-side
    offset, losses summed on the device, a last partial batch eagerly) runs eagerly on a CPU: it must
    give exactly what a plain loop over the same four-model stack gives."""
    from common.compute.training import _GraphGroup, _make_adam, epoch_order

    names = ["linear_l1", "linear_mse", "relu_l1", "relu_mse"]
    cfg = TrainConfig(epochs=2, batch_size=64, seed=3)  # 500 samples: 7 full batches and one of 52
    states = [initial_state(n, cfg.seed) for n in names]
    group = _GraphGroup(names, states, cfg, torch.device("cpu"), None, x.shape[0])
    plain = ModelStack(names, states)
    optim = _make_adam(plain, cfg)
    for epoch in (1, 2):
        order = epoch_order(x.shape[0], cfg.seed, epoch)
        group.epoch(x, order, cfg.batch_size)
        assert group.means == plain_epoch(plain, optim, x, order, cfg.batch_size)
        for p, q in zip([*group.stack.W, *group.stack.b], [*plain.W, *plain.b], strict=True):
            assert torch.equal(p, q)
    assert group.eager_steps == 14 and group.graph is None  # every full batch ran eagerly on the CPU


def test_training_on_cuda_is_one_graph_and_deterministic(x):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here: bench/device_study.py runs this on a GPU")
    a = train_group(list(MODEL_NAMES), x, CFG, recon_ids=[0], device="cuda")
    b = train_group(list(MODEL_NAMES), x, CFG, recon_ids=[0], device="cuda")
    for n in MODEL_NAMES:
        assert a[n].losses == b[n].losses
        assert all(torch.equal(a[n].model_state[k], b[n].model_state[k]) for k in a[n].model_state)
