"""Continual World's SAC networks as an SB3 policy (``agent=sac_cw``), SB3 itself unmodified.

Continual World (continualworld/sac/models.py: ``mlp``, ``MlpActor``, ``MlpCritic``) builds actor and critic
alike: a first Dense layer followed by LayerNorm and tanh, then Dense layers with LeakyReLU (4 × 256 in all),
and, in its default multi-head setting, one output head per task chosen by the task's one-hot id, which the
observation carries and the body does not see (``hide_task_id``). Here the same layers replace SB3's MLPs in
its own ``Actor`` and ``ContinuousCritic`` (so SAC's ``train`` runs unchanged), and the id is the one-hot the
learner appends to observations (``agent.task_id``). Parameter names stay SB3's (``actor.latent_pi.*``,
``actor.mu``, ``critic.qf0.*``), so methods address them as for any SB3 policy.
"""

from __future__ import annotations

from typing import Any

import torch
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN, Actor, SACPolicy
from torch import nn

from retain.errors import ConfigError


def continual_world_mlp(in_dim: int, hidden: list[int]) -> nn.Sequential:
    """Dense → LayerNorm → tanh, then Dense → LeakyReLU for every further hidden layer."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden[0]), nn.LayerNorm(hidden[0]), nn.Tanh()]
    for width_in, width_out in zip(hidden, hidden[1:]):
        layers += [nn.Linear(width_in, width_out), nn.LeakyReLU()]
    return nn.Sequential(*layers)


class _TaskHeads:
    """The task-id handling actor and critic share: where the one-hot sits and which head it selects."""

    num_tasks: int
    heads: int
    hide_task_id: bool

    def _setup_heads(self, features_dim: int, num_tasks: int, multihead: bool, hide_task_id: bool) -> int:
        if multihead and num_tasks < 1:
            raise ConfigError(
                "a multi-head Continual World policy needs the task id in its observations",
                "set agent.task_id=true (or agent.policy_kwargs.multihead=false)",
            )
        self.num_tasks, self.hide_task_id = num_tasks, hide_task_id and num_tasks > 0
        self.heads = num_tasks if multihead else 1
        return features_dim - (num_tasks if self.hide_task_id else 0)

    def _split(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(what the body reads, each row's task index or None) from features that end with the one-hot id."""
        if self.num_tasks == 0:
            return features, None
        task = features[:, -self.num_tasks :].argmax(-1) if self.heads > 1 else None
        return (features[:, : -self.num_tasks] if self.hide_task_id else features), task

    def _select(self, out: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """Each row's own head of ``out`` (rows × heads·k → rows × k)."""
        if task is None:
            return out
        out = out.view(len(out), self.heads, -1)
        return out.gather(1, task.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)


class ContinualWorldActor(Actor, _TaskHeads):
    def __init__(self, *args: Any, num_tasks: int = 0, multihead: bool = True, hide_task_id: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if self.use_sde:
            raise ConfigError("Continual World's actor has no gSDE", "leave agent.hyperparams.use_sde unset")
        body_in = self._setup_heads(self.features_dim, num_tasks, multihead, hide_task_id)
        action_dim = get_action_dim(self.action_space)
        self.latent_pi = continual_world_mlp(body_in, self.net_arch)
        self.mu = nn.Linear(self.net_arch[-1], action_dim * self.heads)
        self.log_std = nn.Linear(self.net_arch[-1], action_dim * self.heads)
        self._cw_kwargs = {"num_tasks": num_tasks, "multihead": multihead, "hide_task_id": hide_task_id}

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self._cw_kwargs}

    def get_action_dist_params(self, obs) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        body_in, task = self._split(self.extract_features(obs, self.features_extractor))
        latent = self.latent_pi(body_in)
        log_std = torch.clamp(self._select(self.log_std(latent), task), LOG_STD_MIN, LOG_STD_MAX)
        return self._select(self.mu(latent), task), log_std, {}


class ContinualWorldCritic(ContinuousCritic, _TaskHeads):
    def __init__(self, *args: Any, num_tasks: int = 0, multihead: bool = True, hide_task_id: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        net_arch = kwargs["net_arch"]
        body_in = self._setup_heads(kwargs["features_dim"], num_tasks, multihead, hide_task_id)
        body_in += get_action_dim(self.action_space)
        n_critics, self.q_networks = len(self.q_networks), []
        for idx in range(n_critics):
            q_net = nn.Sequential(*continual_world_mlp(body_in, net_arch), nn.Linear(net_arch[-1], self.heads))
            self.add_module(f"qf{idx}", q_net)  # replaces SB3's MLP of the same name
            self.q_networks.append(q_net)

    def _q_input(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        with torch.set_grad_enabled(not self.share_features_extractor):
            features = self.extract_features(obs, self.features_extractor)
        body_in, task = self._split(features)
        return torch.cat([body_in, actions], dim=1), task

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, task = self._q_input(obs, actions)
        return tuple(self._select(q_net(x), task) for q_net in self.q_networks)

    def q1_forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        x, task = self._q_input(obs, actions)
        return self._select(self.q_networks[0](x), task)


class ContinualWorldPolicy(SACPolicy):
    """SAC's policy with Continual World's actor and critics. ``num_tasks``: the length of the one-hot task id
    that ends each observation (the learner sets it with ``agent.task_id``); ``multihead``: one output head per
    task; ``hide_task_id``: the body does not read the id (Continual World's default)."""

    def __init__(self, *args: Any, num_tasks: int = 0, multihead: bool = True, hide_task_id: bool = True, **kwargs):
        self._cw_kwargs = {"num_tasks": num_tasks, "multihead": multihead, "hide_task_id": hide_task_id}
        super().__init__(*args, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return {**super()._get_constructor_parameters(), **self._cw_kwargs}

    def head_parameters(self) -> list[str]:
        """Names of the per-task heads' parameters (none with a single head): methods leave them alone, as
        Continual World regularizes and prunes only the networks' common variables."""
        if not self._cw_kwargs["multihead"]:
            return []
        heads = [f"critic.qf{i}.{len(q) - 1}." for i, q in enumerate(self.critic.q_networks)]
        heads += ["actor.mu.", "actor.log_std."]
        return [n for n, _ in self.named_parameters() if n.startswith(tuple(heads))]

    def make_actor(self, features_extractor=None) -> ContinualWorldActor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        return ContinualWorldActor(**kwargs, **self._cw_kwargs).to(self.device)

    def make_critic(self, features_extractor=None) -> ContinualWorldCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)
        return ContinualWorldCritic(**kwargs, **self._cw_kwargs).to(self.device)
