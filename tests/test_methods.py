"""Each continual-learning method's defining mechanism, checked so that a wrong implementation fails:
L2/EWC/MAS penalties vanish at the anchor and pull back to it; EWC's Fisher and MAS's importance equal
hand-computed ones; A-GEM's projected gradient never conflicts with the memory's; PackNet's frozen weights stay
bit-identical while a later task trains and its masks give back the earlier task's outputs; replay batches hold
the configured share of earlier tasks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from retain.config import load_config
from retain.methods import make_method
from retain.methods.agem import project
from tests.conftest import collect_pointmass


class TinyLearner:
    """y = W x + b with unit-variance Gaussian outputs, two tasks of 8 samples each: enough of the learner
    protocol for the methods' hooks, with gradients that can be written down by hand."""

    tasks = ["a", "b"]

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 2)
        self.x = torch.randn(2, 8, 3)
        self.y = torch.randn(2, 8, 2)
        self.stepping = None

    def named_parameters(self):
        return self.model.named_parameters()

    def regularized_parameters(self, critic=False):
        return ["weight", "bias"]

    def method_batches(self, task, batches, batch_size):
        rows = torch.arange(batches * batch_size) % len(self.x[task])  # the task's samples, in order, cycled
        for start in range(0, len(rows), batch_size):
            pick = rows[start : start + batch_size]
            yield self.x[task][pick], self.y[task][pick]

    def log_likelihood(self, batch):
        x, y = batch
        return torch.distributions.Normal(self.model(x), 1.0).log_prob(y).sum(-1)

    def output_norm(self, batch):
        return self.model(batch[0]).pow(2).sum(-1)

    def loss(self, batch):
        x, y = batch
        return (self.model(x) - y).pow(2).mean()

    def memory(self, task, size):
        return {"x": self.x[task], "y": self.y[task]}

    def memory_batch(self, memories, size, generator):
        return torch.cat([m["x"] for m in memories]), torch.cat([m["y"] for m in memories])


def _anchored(name: str, **cfg):
    learner = TinyLearner()
    method = make_method({"name": name, "batches": 1, "batch_size": 8, **cfg})
    method.after_task(SimpleNamespace(learner=learner), 0)
    return learner, method


@pytest.mark.parametrize("name", ["l2", "ewc", "mas"])
def test_penalty_is_zero_at_the_anchor_and_pulls_back_to_it(name):
    learner, method = _anchored(name, coef=3.0)
    assert float(method.penalty(learner).detach()) == 0.0
    delta = {n: torch.randn_like(p) * 0.1 for n, p in learner.named_parameters()}
    with torch.no_grad():
        for n, p in learner.named_parameters():
            p.add_(delta[n])
    penalty = method.penalty(learner)
    grads = torch.autograd.grad(penalty, [p for _, p in learner.named_parameters()])
    for (n, _), g in zip(learner.named_parameters(), grads):
        assert torch.allclose(g, 2 * 3.0 * method.omega[n] * delta[n])  # d/dθ of coef·Ω(θ−θ*)²
    step = sum((g * delta[n]).sum() for (n, _), g in zip(learner.named_parameters(), grads))
    assert step > 0  # gradient descent moves θ back towards θ*


def test_ewc_fisher_is_the_mean_of_per_sample_squared_score_gradients():
    learner, method = _anchored("ewc", fisher="empirical")
    W, b = learner.model.weight.detach(), learner.model.bias.detach()
    x, y = learner.x[0], learner.y[0]
    residual = y - (x @ W.T + b)  # d log N(y; Wx+b, 1) / d(Wx+b)
    fisher_w = np.mean([np.outer(r, xi) ** 2 for r, xi in zip(residual.numpy(), x.numpy())], axis=0)
    fisher_b = np.mean([r**2 for r in residual.numpy()], axis=0)
    assert np.allclose(method.omega["weight"].numpy(), np.maximum(fisher_w, 1e-5), atol=1e-6)
    assert np.allclose(method.omega["bias"].numpy(), np.maximum(fisher_b, 1e-5), atol=1e-6)


class GaussianLearner(TinyLearner):
    """The tiny model as a Gaussian policy N(W x + b, exp(log_std)) with a learned, state-independent std."""

    def __init__(self):
        super().__init__()
        self.log_std = torch.nn.Parameter(torch.tensor([-0.5, 0.3]))

    def named_parameters(self):
        return [*self.model.named_parameters(), ("log_std", self.log_std)]

    def regularized_parameters(self, critic=False):
        return ["weight", "bias", "log_std"]

    def is_gaussian(self):
        return True

    def gaussian(self, batch):
        mean = self.model(batch[0])
        return mean, self.log_std.exp().expand_as(mean)


def test_ewc_fisher_of_a_gaussian_policy_is_continual_worlds_closed_form():
    """Per sample Σ_k ((∂μ_k)² + 2 (∂σ_k)²) / σ_k², clipped at 1e-5, averaged: for μ = W x + b, the weight's
    entry (k, j) is mean(x_j²) / σ_k², the bias's 1 / σ_k²; for σ = exp(log_std), log_std's is 2 exactly."""
    learner = GaussianLearner()
    method = make_method({"name": "ewc", "batches": 1, "batch_size": 8})
    method.after_task(SimpleNamespace(learner=learner), 0)
    var = learner.log_std.detach().exp().pow(2).numpy()
    x = learner.x[0].numpy()
    expected_w = (x**2).mean(0)[None, :] / var[:, None]
    assert np.allclose(method.omega["weight"].numpy(), np.maximum(expected_w, 1e-5), rtol=1e-4)
    assert np.allclose(method.omega["bias"].numpy(), 1.0 / var, rtol=1e-4)
    assert np.allclose(method.omega["log_std"].numpy(), 2.0, rtol=1e-4)
    empirical = make_method({"name": "ewc", "batches": 1, "batch_size": 8, "fisher": "empirical"})
    empirical.after_task(SimpleNamespace(learner=GaussianLearner()), 0)
    assert not torch.allclose(empirical.omega["bias"], method.omega["bias"])  # the switch chooses the estimate


def test_mas_importance_is_the_mean_absolute_gradient_of_the_output_norm():
    learner, method = _anchored("mas")
    W, b = learner.model.weight.detach(), learner.model.bias.detach()
    x = learner.x[0]
    out = (x @ W.T + b).numpy()
    expected_w = np.mean([np.abs(2 * np.outer(o, xi)) for o, xi in zip(out, x.numpy())], axis=0)
    assert np.allclose(method.omega["weight"].numpy(), expected_w, atol=1e-5)


def test_importance_adds_up_over_tasks():
    learner, method = _anchored("l2")
    method.after_task(SimpleNamespace(learner=learner), 1)  # the last task: nothing trains after it
    assert torch.equal(method.omega["weight"], torch.ones(2, 3))
    learner.tasks = ["a", "b", "c"]
    method.after_task(SimpleNamespace(learner=learner), 1)
    assert torch.equal(method.omega["weight"], 2 * torch.ones(2, 3))


def test_agem_projection_never_conflicts_with_the_memory_gradient():
    torch.manual_seed(0)
    for _ in range(100):
        g, ref = torch.randn(20), torch.randn(20)
        out = project(g, ref)
        assert torch.dot(out, ref) >= -1e-5
        if torch.dot(g, ref) >= 0:
            assert out is g  # no conflict: left alone
    learner = TinyLearner()
    method = make_method({"name": "agem", "memory_per_task": 8, "batch_size": 8})
    method.after_task(SimpleNamespace(learner=learner), 0)
    ref_grads = torch.autograd.grad(learner.loss((learner.x[0], learner.y[0])), list(learner.model.parameters()))
    reference = torch.cat([r.flatten() for r in ref_grads])
    for p, r in zip(learner.model.parameters(), ref_grads):
        p.grad = -r.clone()  # training on task b pulls straight against task a's memory
    method.transform_gradients(learner)
    projected = torch.cat([p.grad.flatten() for p in learner.model.parameters()])
    assert torch.dot(projected, reference) >= -1e-6
    assert projected.abs().max() < 1e-5  # exactly opposite: nothing of it survives the projection


def test_replay_batches_hold_the_configured_share_of_earlier_tasks(offline_learner):
    learner = offline_learner(["learner.batch_size=64"])
    replay = make_method({"name": "replay", "share": 0.5})
    learner.prepare_task(2, [2], replay.replay(2))
    generator = torch.Generator().manual_seed(0)
    _, _, tasks = learner.data.batch(torch.tensor([2]), 64, generator, learner.replay_rows)
    assert [(tasks == k).sum().item() for k in range(3)] == [16, 16, 32]
    assert replay.replay(0) == {}


def test_a_replay_budget_draws_earlier_tasks_rows_from_the_kept_ones_only(offline_learner):
    learner = offline_learner(["learner.batch_size=64"])
    replay = make_method({"name": "replay", "share": 0.5, "memory_per_task": 5})
    learner.prepare_task(2, [2], replay.replay(2), replay.replay_memory())
    memories = learner._replay_memories()
    assert sorted(memories) == [0, 1] and all(len(rows) == 5 for rows in memories.values())
    assert torch.equal(memories[0], learner._replay_memories()[0])  # a fixed draw: resume replays the same rows
    generator = torch.Generator().manual_seed(0)
    seen = {0: set(), 1: set(), 2: set()}
    for _ in range(20):
        obs, _, tasks = learner.data.batch(torch.tensor([2]), 64, generator, learner.replay_rows, memories)
        for row, task in zip(obs.tolist(), tasks.tolist()):
            seen[task].add(tuple(row))
    for j in (0, 1):
        assert seen[j] == {tuple(row) for row in learner.data.obs[memories[j]].tolist()}  # all 5, and only them
    assert len(seen[2]) > 100  # the current task is not budgeted


def test_packnet_freezes_earlier_tasks_and_gives_back_their_outputs(offline_learner, tmp_path):
    from retain.runner import Runner

    # AdamW kept across tasks, with weight decay: both would move frozen weights unless PackNet puts them back
    learner = offline_learner(
        [
            "learner.updates_per_task=30",
            "learner.batch_size=32",
            "learner.reset_optimizer=false",
            "learner.weight_decay=0.1",
        ]
    )
    learner.tasks = learner.tasks[:2]
    obs = learner.data.rows(learner.data.task_rows(0, 16, torch.Generator().manual_seed(1)), torch.zeros(16))[0]
    seen = {}

    packnet = make_method({"name": "packnet", "retrain_steps": 10})
    after_training = packnet.after_training

    def record(run, task):
        after_training(run, task)
        if task == 0:  # task 0's network, as it is evaluated from now on
            seen["owned"] = {n: p.detach().clone() for n, p in learner.named_parameters()}
            seen["outputs"] = learner._act(obs, 0)

    packnet.after_training = record
    Runner(learner, packnet, tmp_path, write_files=False).run()
    owner = packnet.owner
    for name, p in learner.named_parameters():
        frozen = (owner[name] == 0) if owner[name].dim() >= 2 else torch.ones_like(p, dtype=torch.bool)
        assert torch.equal(p.detach()[frozen], seen["owned"][name][frozen]), name  # bit-identical
    assert all((o == 1).any() for o in owner.values() if o.dim() >= 2)  # task 1 got weights of its own
    own = learner.weights()
    learner.load_weights(packnet.eval_weights(SimpleNamespace(learner=learner), 1, 0))
    assert np.array_equal(learner._act(obs, 0), seen["outputs"])  # the mask gives task 0's network back
    learner.load_weights(own)
    learner.close()


@pytest.fixture(scope="module")
def _pointmass(tmp_path_factory):
    return collect_pointmass(tmp_path_factory.mktemp("methods_data"), episodes=4, ref_episodes=1)


@pytest.fixture
def offline_learner(_pointmass, monkeypatch, tmp_path):
    from finetune.sequence import build_learner, build_tasks

    monkeypatch.setenv("RETAIN_DATA", str(_pointmass))
    made = []

    def make(overrides):
        cfg = load_config(
            "sequence",
            [
                "sequence=pointmass4",
                "learner=offline",
                "learner.policy.hidden=[16,16]",
                "sequence.eval_episodes=1",
                "eval.during=none",
                f"run_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )
        made.append(build_learner(cfg, build_tasks(cfg)))
        return made[-1]

    yield make
    for learner in made:
        learner.close()


def test_packnet_retrains_a_tenth_of_the_task_budget_by_default():
    """Continual World retrains 100k steps after 1M; a shrunk budget (a smoke test) shrinks the retraining."""
    learner, retrained = TinyLearner(), []
    learner.budget = lambda task: 1230
    learner.retrain = lambda task, units: retrained.append((task, units))
    packnet = make_method({"name": "packnet"})
    run = SimpleNamespace(learner=learner)
    packnet.before_task(run, 0)
    packnet.after_training(run, 0)  # task 0 of 2: pruned and retrained
    packnet.after_training(run, 1)  # the last task: neither
    assert retrained == [(0, 123)]
