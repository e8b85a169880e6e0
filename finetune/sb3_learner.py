"""The SB3 learner: online RL with Stable-Baselines3 on the continual runner's ``Learner`` protocol.

One SB3 algorithm (``agent/`` config) trains task after task; SB3 stays an unmodified dependency. Its
budget unit is the environment step, and a chunk is a whole number of SB3 iterations (``learn()`` never
stops mid-rollout). Every chunk re-derives all seeds from (seed, task, chunk) — global RNGs, the action
space, the envs' next reset — so a chunk trains the same whether or not the process restarted before it.

Continual methods reach SB3's own ``train()`` without a fork: a loss penalty and a gradient transform run in
an optimizer step pre-hook (``register_step_pre_hook``) on each of the algorithm's optimizers — the penalty's
gradient is added to ``.grad`` right before the step (after SB3's gradient clipping, for PPO/A2C).
``stepping`` names the parameters of the optimizer stepping (SAC steps its critic and its actor apart).

``learner.encoder.path`` starts the policy from a pretrained observation encoder (``agents.sb3_encoder``):
its features extractor, frozen (the default: weights that neither optimizers, target updates nor methods
touch) or tuned; with an encoder that reads a history, every training and evaluation env stacks frames.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from agents.sb3 import AgentConfig, build_model, load_model_state, model_state, rollout_size
from envs.mixture import make_mixture_env
from finetune.env_tasks import EnvScorer, EvalSettings, Task, swapped_weights
from retain.errors import ConfigError
from retain.learner import LearnerState, StepHooks, TaskScore
from retain.seeding import derive_seed, seed_everything


@dataclass
class Sb3EncoderUse:
    """``learner.encoder``: a pretrained observation encoder (``retain pretrain``'s model/ folder) as the SB3
    policy's features extractor (``agents.sb3_encoder``; learner=offline's is ``finetune.encoder_use``)."""

    path: str | None = None
    """the encoder folder; None: SB3's own extractor (flatten for states, NatureCNN for CnnPolicy)"""
    freeze: bool = True
    """keep the encoder's weights fixed (only the policy's heads train); false: tune it with the policy"""


@dataclass
class Sb3LearnerConfig:
    """``learner=sb3``: online RL with the SB3 algorithm of the ``agent/`` group."""

    name: str = "sb3"
    """the learner (sb3 | offline)"""
    reset_replay_buffer: bool = True
    """off-policy agents: empty the replay buffer when the task changes (Continual World's default)"""
    encoder: Sb3EncoderUse = field(default_factory=Sb3EncoderUse)
    """start the policy from a pretrained encoder (``learner.encoder.path``), frozen or tuned"""


def _minibatches(model) -> int:
    """Gradient steps per epoch of an on-policy ``train()`` (A2C: one)."""
    size = model.rollout_buffer.buffer_size * model.rollout_buffer.n_envs
    batch = getattr(model, "batch_size", None) or size
    return -(-size // batch)


def _optimizers(model: BaseAlgorithm) -> list[torch.optim.Optimizer]:
    """The algorithm's optimizers (SAC: actor, critic and entropy coefficient)."""
    return [
        obj
        for name in model._get_torch_save_params()[0]
        if name != "policy" and isinstance(obj := _attr(model, name), torch.optim.Optimizer)
    ]


class _TrackerWriter(KVWriter):
    """Forwards SB3's logger records to the run's tracker under retain's metric prefixes."""

    RENAME = {
        "rollout/ep_rew_mean": "train/ep_return_mean",
        "rollout/ep_len_mean": "train/ep_length_mean",
        "rollout/success_rate": "train/success_rate",
        "time/fps": "perf/fps",
    }

    def __init__(self, learner: Sb3Learner):
        self.learner = learner

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        metrics = {}
        for key, value in key_values.items():
            name = self.RENAME.get(key, key if key.startswith("train/") else None)
            if name is not None and isinstance(value, int | float | np.floating | np.integer):
                metrics[name] = float(value)
        if metrics:
            self.learner.log(metrics, self.learner.global_step + step - self.learner.chunk_start_timesteps)

    def close(self) -> None:
        pass


class _ProgressCallback(BaseCallback):
    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def _on_training_start(self) -> None:
        self._last = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.bar.update(self.model.num_timesteps - self._last)
        self._last = self.model.num_timesteps


class Sb3Learner:
    """See the module docstring; the protocol is ``retain.learner.Learner``."""

    higher_is_better = True
    unit = "environment steps"

    def __init__(
        self,
        tasks: list[Task],
        agent: AgentConfig,
        cfg: Sb3LearnerConfig,
        evaluation: EvalSettings,
        metric: str,
        seed: int,
        device: str = "auto",
        extra: dict[str, list[Task]] | None = None,
    ):
        if agent.task_id and extra:
            raise ConfigError(
                "extra evaluation sets have no task id to append to their observations",
                "drop extra_eval or set agent.task_id=false",
            )
        if agent.task_id:  # each task's envs append its one-hot id (Continual World's setting)
            tasks = [replace(t, env=replace(t.env, one_hot_task=[j, len(tasks)])) for j, t in enumerate(tasks)]
        self.encoder_info = ""
        if cfg.encoder.path is not None:
            tasks, extra, agent = self._use_encoder(tasks, extra or {}, agent, cfg.encoder)
        self.task_list, self.agent, self.cfg = tasks, agent, cfg
        self.tasks = self.eval_tasks = [t.name for t in tasks]
        self.metric, self.seed, self.device = metric, seed, device
        self.scorer = EnvScorer(tasks, evaluation, metric, seed, extra or {})
        self._fresh: dict[int, dict[str, torch.Tensor]] = {}
        self._global_step = 0
        self.chunk_start_timesteps = 0
        self.hooks = StepHooks()
        self.stepping: set[str] | None = None
        self.log = lambda metrics, step: None
        self.bar = None
        self.model_task = 0
        self.model: BaseAlgorithm = self._new_model(0, [0])

    def _use_encoder(
        self, tasks: list[Task], extra: dict[str, list[Task]], agent: AgentConfig, use: Sb3EncoderUse
    ) -> tuple[list[Task], dict[str, list[Task]], AgentConfig]:
        """The tasks (their observations stacked as the encoder's history wants) and the agent whose policy
        extracts features with the pretrained encoder; checked before anything is written."""
        from agents.encoders import check_fits, load_encoder
        from agents.sb3_encoder import encoder_policy_kwargs
        from envs.registry import make_env

        path = str(Path(use.path).expanduser().resolve())
        encoder = load_encoder(path)  # a wrong path or a damaged file: one line
        if agent.task_id:
            raise ConfigError(
                "agent.task_id appends a one-hot task id to observations, which the pretrained encoder does not take",
                "set agent.task_id=false with learner.encoder.path",
            )
        clash = {"features_extractor_class", "features_extractor_kwargs"} & set(agent.policy_kwargs)
        if clash:
            raise ConfigError(
                f"agent.policy_kwargs sets {', '.join(sorted(clash))} and learner.encoder.path sets the extractor too",
                "drop one of them",
            )
        history = encoder.cfg.history
        if history > 1:  # the encoder reads `history` consecutive observations: the envs stack them

            def stacked(ts: list[Task]) -> list[Task]:
                for t in ts:
                    if t.env.frame_stack not in (None, 1, history):
                        raise ConfigError(
                            f"task {t.name!r} stacks {t.env.frame_stack} frames but the encoder reads {history}",
                            "drop env.frame_stack: the learner stacks what the encoder reads",
                        )
                return [replace(t, env=replace(t.env, frame_stack=history)) for t in ts]

            tasks, extra = stacked(tasks), {name: stacked(ts) for name, ts in extra.items()}
        env = make_env(tasks[0].env, monitor=False)()  # the tasks share their spaces (build_tasks checked)
        try:
            check_fits(encoder, env.observation_space, f"task {tasks[0].name!r}")
        finally:
            env.close()
        kwargs = encoder_policy_kwargs(path, use.freeze)
        agent = replace(agent, policy_kwargs={**agent.policy_kwargs, **kwargs})
        self.encoder_info = (
            f"- encoder: `{path}` ({'frozen' if use.freeze else 'trainable'}; {encoder.cfg.kind}, "
            f"latent {encoder.dim}" + (f", {history} stacked frames" if history > 1 else "") + ")"
        )
        return tasks, extra, agent

    # -- models and envs ---------------------------------------------------------------------------------

    def _train_env(self, data_tasks: list[int]) -> VecEnv:
        thunks = [make_mixture_env([self.task_list[k].env for k in data_tasks]) for _ in range(self.agent.n_envs)]
        if self.agent.vec_env == "subproc" and len(thunks) > 1:
            return SubprocVecEnv(thunks, start_method="forkserver")
        return DummyVecEnv(thunks)

    def _new_model(self, task: int, data_tasks: list[int]) -> BaseAlgorithm:
        """A fresh model, seeded by ``task`` (not by history), training on ``data_tasks``."""
        if getattr(self, "model", None) is not None and self.model.env is not None:
            self.model.env.close()
        self.data_tasks = list(data_tasks)
        env = self._train_env(data_tasks)
        model = build_model(self.agent, env, derive_seed(self.seed, "model", task), self.device, len(self.task_list))
        self._install_hooks(model)
        return model

    def _install_hooks(self, model: BaseAlgorithm) -> None:
        """Methods' penalties, gradient transforms and after-step actions around each SB3 optimizer step."""
        if not self.hooks.any_step_hook:
            return
        names = {id(p): n for n, p in model.policy.named_parameters()}
        for optimizer in _optimizers(model):
            params = [p for g in optimizer.param_groups for p in g["params"] if id(p) in names]
            if params:
                optimizer.register_step_pre_hook(lambda opt, args, kwargs, params=params: self._before_step(params))
                if self.hooks.has_after_step:
                    optimizer.register_step_post_hook(lambda opt, args, kwargs, params=params: self._after_step(params))

    def _stepping(self, params: list[torch.nn.Parameter]) -> set[str]:
        names = {id(p): n for n, p in self.model.policy.named_parameters()}
        return {names[id(p)] for p in params}

    def _before_step(self, params: list[torch.nn.Parameter]) -> None:
        self.stepping = self._stepping(params)
        try:
            if self.hooks.has_penalty:
                with torch.enable_grad():
                    penalty = self.hooks.penalty(self)
                if penalty is not None and penalty.requires_grad:
                    grads = torch.autograd.grad(penalty, params, allow_unused=True)
                    for p, g in zip(params, grads):
                        if g is not None:
                            p.grad = g.detach() if p.grad is None else p.grad + g.detach()
            self.hooks.transform_gradients(self)
        finally:
            self.stepping = None

    def _after_step(self, params: list[torch.nn.Parameter]) -> None:
        self.stepping = self._stepping(params)
        try:
            self.hooks.after_step(self)
        finally:
            self.stepping = None

    # -- the protocol ------------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        return self._global_step

    def budget(self, task: int) -> int:
        return self.task_list[task].steps

    def granularity(self, task: int) -> int:
        return rollout_size(self.agent)

    def bind(self, log, hooks: StepHooks, progress) -> None:
        self.log, self.hooks, self.bar = log, hooks, progress
        self._install_hooks(self.model)

    def prepare_task(
        self, task: int, data_tasks: list[int], replay: dict[int, float] | None = None, memory: int | None = None
    ) -> bool:
        buffer = getattr(self.model, "replay_buffer", None)
        if memory is not None:
            raise ConfigError(
                "method.memory_per_task budgets offline and CPT replay; SB3 replays from its replay buffer",
                "drop method.memory_per_task and size the buffer with agent.hyperparams.buffer_size",
            )
        if replay and buffer is None:
            raise ConfigError(
                f"replay keeps earlier tasks' transitions in the replay buffer, which {self.agent.algo} has none of",
                "use an off-policy agent (agent=sac, sac_cw) with method=replay",
            )
        if list(data_tasks) != self.data_tasks:
            self.model.env.close()
            self.model.set_env(self._train_env(data_tasks), force_reset=True)
            self.data_tasks = list(data_tasks)
        # Continual World's perfect memory: with replay the buffer keeps every earlier task's transitions
        if self.cfg.reset_replay_buffer and buffer is not None and not replay:
            buffer.reset()
        if self.agent.reset_optimizer and task > 0:  # Adam's moments of the last task would move the new one
            for optimizer in _optimizers(self.model):
                optimizer.state.clear()
        return False

    def train_chunk(self, task: int, chunk: int, units: int) -> None:
        model = self.model
        chunk_seed = derive_seed(self.seed, "train", task, chunk)
        seed_everything(chunk_seed)
        model.set_random_seed(chunk_seed)  # global RNGs, the action space, and the envs' next reset
        model._last_obs = None  # makes learn() reset the freshly seeded envs
        model.set_logger(Logger(folder=None, output_formats=[_TrackerWriter(self)]))
        self.chunk_start_timesteps = model.num_timesteps
        t0 = time.perf_counter()
        model.learn(units, reset_num_timesteps=False, callback=_ProgressCallback(self.bar), log_interval=1)
        seconds = time.perf_counter() - t0
        self._global_step += model.num_timesteps - self.chunk_start_timesteps
        self.chunk_start_timesteps = model.num_timesteps
        self.log({"perf/train_steps_per_second": units / max(seconds, 1e-9)}, self._global_step)

    def _act(self, obs):
        return self.model.predict(obs, deterministic=True)[0]

    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        with swapped_weights(self.model.policy, weights, self._act) as predict:
            return self.scorer.score(tasks, predict, same_policy=all(weights.get(j) is None for j in tasks))

    def extra_eval_sets(self) -> dict[str, list[str]]:
        return self.scorer.extra_sets()

    def evaluate_extra(self, name: str) -> list[TaskScore]:
        return self.scorer.score_extra(name, self._act)

    def named_parameters(self):
        return self.model.policy.named_parameters()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.policy.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.policy.load_state_dict(weights)

    def initial_weights(self, task: int) -> dict[str, torch.Tensor]:
        if task not in self._fresh:
            agent = AgentConfig(**{**self.agent.__dict__, "hyperparams": dict(self.agent.hyperparams)})
            if "buffer_size" in agent.hyperparams:
                agent.hyperparams["buffer_size"] = 1  # only the policy is wanted, not a 1M-step buffer
            env = DummyVecEnv([make_mixture_env([self.task_list[task].env]) for _ in range(agent.n_envs)])
            model = build_model(agent, env, derive_seed(self.seed, "model", task), "cpu", len(self.task_list))
            self._fresh[task] = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
            env.close()
        return self._fresh[task]

    def reset_model(self, task: int) -> None:
        self.model = self._new_model(task, [task])
        self.model_task = task

    def state(self) -> LearnerState:
        weights, state, arrays = model_state(self.model)
        state["learner"] = {
            "model_task": getattr(self, "model_task", 0),
            "data_tasks": self.data_tasks,
            "global_step": self._global_step,
        }
        return LearnerState(weights, state, arrays)

    def load_state(self, state: LearnerState, where: str) -> None:
        own = state.state["learner"]
        self.model = self._new_model(own["model_task"], own["data_tasks"])
        self.model_task = own["model_task"]
        load_model_state(self.model, state.weights, state.state, state.arrays, where)
        self._global_step = int(own["global_step"])

    # -- what continual-learning methods use (retain/methods) --------------------------------------------

    @property
    def _off_policy(self) -> bool:
        return getattr(self.model, "replay_buffer", None) is not None

    def _need(self, what: str, off_policy: bool = False) -> None:
        if self.agent.algo not in ("SAC", "PPO", "A2C") or (off_policy and self.agent.algo != "SAC"):
            raise ConfigError(
                f"{what} is implemented for SB3's SAC{'' if off_policy else ', PPO and A2C'}, not {self.agent.algo}",
                "use agent=sac or agent=sac_cw" + ("" if off_policy else " (or ppo)"),
            )

    def regularized_parameters(self, critic: bool = False) -> list[str]:
        """SAC: the actor's parameters (and the critics' with ``critic``; never the target critics); PPO/A2C:
        the shared network and the action head (and the value head with ``critic``). Per-task heads of a
        multi-head policy are never included (Continual World's ``common_variables``)."""
        heads = set(getattr(self.model.policy, "head_parameters", list)())  # per-task heads: left alone
        names = [n for n, _ in self.model.policy.named_parameters() if n not in heads]
        if self.agent.algo in ("SAC", "TD3"):
            return [n for n in names if n.startswith("actor.") or (critic and n.startswith("critic."))]
        return [n for n in names if critic or "value_net" not in n]

    def method_batches(self, task: int, batches: int, batch_size: int):
        """Batches of the task's own experience: its replay buffer (SAC), or its last rollout (PPO/A2C)."""
        self._need("estimating importance")
        seed_everything(derive_seed(self.seed, "method-batches", task))  # SB3 samples with the global RNGs
        if self._off_policy:
            for _ in range(batches):
                yield self.model.replay_buffer.sample(batch_size)
        else:
            for k, rollout in enumerate(self.model.rollout_buffer.get(batch_size)):
                if k == batches:
                    break
                yield rollout

    def log_likelihood(self, batch) -> torch.Tensor:
        if self._off_policy:
            mean, log_std, kwargs = self.model.actor.get_action_dist_params(batch.observations)
            dist = self.model.actor.action_dist.proba_distribution(mean, log_std, **kwargs)
            return dist.log_prob(batch.actions)
        return self.model.policy.evaluate_actions(batch.observations, batch.actions)[1]

    def is_gaussian(self) -> bool:
        """SAC, PPO and A2C on Box actions act through a Gaussian (SAC's before squashing; TD3 is deterministic)."""
        return self.agent.algo in ("SAC", "PPO", "A2C") and isinstance(self.model.action_space, gym.spaces.Box)

    def gaussian(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self._off_policy:
            mean, log_std, _ = self.model.actor.get_action_dist_params(batch.observations)
            return mean, log_std.exp()
        dist = self.model.policy.get_distribution(batch.observations).distribution
        return dist.mean, dist.stddev

    def critic_parameters(self) -> list[str]:
        """SAC's critics (what EWC's critic Fisher covers with ``method.critic=true``); none for PPO/A2C."""
        return (
            [n for n, _ in self.model.policy.named_parameters() if n.startswith("critic.")] if self._off_policy else []
        )

    def critic_values(self, batch) -> torch.Tensor:
        """Per sample, the sum of SAC's Q-values of the batch's actions (each critic's parameters reach only its
        own Q, so the squared gradient of the sum is each critic's own)."""
        return torch.cat(self.model.critic(batch.observations, batch.actions), dim=1).sum(-1)

    def output_norm(self, batch) -> torch.Tensor:
        if self._off_policy:
            mean, log_std, _ = self.model.actor.get_action_dist_params(batch.observations)
            return mean.pow(2).sum(-1) + log_std.pow(2).sum(-1)
        dist = self.model.policy.get_distribution(batch.observations).distribution
        if hasattr(dist, "logits"):
            return dist.logits.pow(2).sum(-1)
        return dist.mean.pow(2).sum(-1) + self.model.policy.log_std.pow(2).sum()

    def loss(self, batch) -> torch.Tensor:
        """The agent's objective on a memory batch (A-GEM). SAC: the critics' loss while they step, the actor's
        while it does; PPO/A2C: the policy-gradient objective on stored rollout rows (``policy_gradient_loss``)."""
        self._need("a loss on a memory batch (A-GEM)")
        from agents.sb3_losses import policy_gradient_loss, sac_losses

        if not self._off_policy:
            return policy_gradient_loss(self.model, batch)
        actor_loss, critic_loss = sac_losses(self.model, batch)
        stepping = self.stepping or set()
        if any(n.startswith("critic.") for n in stepping):
            return critic_loss
        if any(n.startswith("actor.") for n in stepping):
            return actor_loss
        return actor_loss + critic_loss

    def _memory_fields(self) -> tuple[str, ...]:
        if self._off_policy:
            return ("observations", "actions", "next_observations", "dones", "rewards")
        return ("observations", "actions", "old_values", "old_log_prob", "advantages", "returns")

    def memory(self, task: int, size: int) -> dict[str, torch.Tensor]:
        """``size`` samples of the task's experience: its replay buffer (SAC), or its last rollout (PPO/A2C,
        with the advantages and returns computed when it was collected; at most the rollout's size)."""
        self._need("an episodic memory (A-GEM)")
        buffer = self.model.replay_buffer if self._off_policy else self.model.rollout_buffer
        if isinstance(buffer.observations, dict):
            raise ConfigError("A-GEM's memory takes array observations, not Dict", "use a task with Box observations")
        seed_everything(derive_seed(self.seed, "memory", task))
        batch = (
            buffer.sample(size)
            if self._off_policy
            else next(iter(buffer.get(min(size, buffer.buffer_size * buffer.n_envs))))
        )
        return {k: getattr(batch, k).detach().cpu() for k in self._memory_fields()}

    def memory_batch(self, memories: list[dict[str, torch.Tensor]], size: int, generator: torch.Generator):
        from stable_baselines3.common.type_aliases import ReplayBufferSamples, RolloutBufferSamples

        fields = {k: torch.cat([m[k] for m in memories]) for k in memories[0]}
        pick = torch.randint(len(fields["actions"]), (size,), generator=generator)
        samples = ReplayBufferSamples if self._off_policy else RolloutBufferSamples
        return samples(**{k: v[pick].to(self.model.device) for k, v in fields.items()})

    def retrain(self, task: int, units: int) -> None:
        """At least ``units`` more gradient steps on the task's own experience (PackNet), through SB3's own
        ``train``: SAC samples its replay buffer; PPO/A2C pass over the task's last rollout again."""
        self._need("retraining (PackNet)")
        seed_everything(derive_seed(self.seed, "retrain", task))
        if self._off_policy:
            self.model.train(gradient_steps=units, batch_size=self.model.batch_size)
            return
        done = 0
        while done < units:  # one train() is n_epochs passes over the rollout in minibatches
            before = self.model._n_updates
            self.model.train()
            done += max(self.model._n_updates - before, 1) * _minibatches(self.model)

    def describe(self) -> list[str]:
        """The report's lines on what trained."""
        a = self.agent
        return [
            f"- agent: `{a.algo}` `{a.policy}` ×{a.n_envs} envs; replay buffer reset per task: {self.cfg.reset_replay_buffer}",
            f"- hyper-parameters: `{json.dumps(a.hyperparams)}`",
        ] + ([self.encoder_info] if self.encoder_info else [])

    def summary(self, results: dict) -> dict[str, Any]:
        return {"agent": self.agent.algo}

    def close(self) -> None:
        self.scorer.close()
        if self.model is not None and self.model.env is not None:
            self.model.env.close()


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj
