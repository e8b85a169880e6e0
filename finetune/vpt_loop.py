"""VPT's loop (Baker et al. 2022) as one job, ``retain label loop.enabled=true``: an inverse-dynamics model
trained on the labelled fraction of a dataset pseudo-labels every episode of its action-free corpus, behaviour
cloning trains on the pseudo-labels, and the same BC trained on the labelled fraction alone is the baseline.

Each step is the job a user would run by hand, in one run directory:

- ``idm/``: ``retain pretrain objective=idm`` on the first ``fraction`` of ``loop.dataset``'s episodes;
- ``label/``: ``retain label`` of the dataset's ``observations_only.hdf5`` into
  ``vpt/<dataset>/labelled<episodes>-seed<seed>-v0``
  (scored against the true actions: the IDM's action MSE and R²);
- ``bc_pseudo/`` and ``bc_labelled/``: ``retain sequence learner=offline`` on the pseudo-labels, and on the
  labelled episodes with their true actions; success in the dataset's env;
- ``vpt.json``: the figures side by side. Swept over fractions and seeds (``experiment=vpt_pointmass``), the
  ``VptSweepReport`` callback tabulates them with rliable intervals over seeds.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from envs.spec import EnvSpec, SequenceConfig, TaskConfig
from retain.config import load_config
from retain.errors import ConfigError, DatasetError
from retain.rundir import prepare_run_dir, write_summary

RESULT_FILE = "vpt.json"


def _sequence(name: str, spec: EnvSpec, dataset: str, episodes: int) -> DictConfig:
    task = TaskConfig(name=spec.name or "task", env=spec, dataset=dataset)
    return OmegaConf.structured(SequenceConfig(name=name, tasks=[task], metric="success", eval_episodes=episodes))


def _bc(cfg: DictConfig, run_dir: Path, name: str, spec: EnvSpec, dataset: str, episodes: int | None) -> float:
    from finetune.sequence import run_sequence

    limit = "null" if episodes is None else episodes
    seq = load_config(
        "sequence",
        [
            "learner=offline",
            "sequence=single",
            "learner.task_id=false",
            f"learner.max_episodes={limit}",
            f"seed={cfg.seed}",
            f"run_dir={run_dir / name}",
            f"progress={cfg.progress}",
            f"threads={cfg.threads}",
            f"device={cfg.device}",
            *cfg.loop.bc,
        ],
    )
    seq.sequence = _sequence(f"vpt_{name}", spec, dataset, cfg.loop.eval_episodes)
    return float(run_sequence(seq)["average"])


def run_vpt_loop(cfg: DictConfig) -> dict:
    from envs.datasets import dataset_path, load_transitions
    from pretrain.encoder_job import run_encoder_pretraining
    from pretrain.label import label

    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    loop = cfg.loop
    if not loop.dataset or dataset_path(loop.dataset) is None:
        raise DatasetError(
            f"loop.dataset={loop.dataset} not found",
            "collect it with `retain collect env=<env> dataset.action_free=true dataset.namespace=vpt`",
        )
    if not 0 < loop.fraction <= 1 or loop.eval_episodes < 1:
        raise ConfigError(
            f"loop.fraction={loop.fraction}, loop.eval_episodes={loop.eval_episodes}",
            "use 0 < fraction <= 1 and eval_episodes >= 1",
        )
    corpus = Path(dataset_path(loop.dataset)) / "observations_only.hdf5"
    if not corpus.is_file():
        raise DatasetError(
            f"{loop.dataset} has no action-free corpus ({corpus.name})",
            "collect it again with dataset.action_free=true",
        )
    data = load_transitions(loop.dataset)
    if not data.env_spec:
        raise DatasetError(f"{loop.dataset} names no env", "use a dataset written by `retain collect`")
    spec = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvSpec), data.env_spec))
    episodes = len(data.episode_starts)
    labelled = max(1, round(loop.fraction * episodes))
    pseudo = f"vpt/{loop.dataset.replace('/', '_').removesuffix('-v0')}/labelled{labelled}-seed{cfg.seed}-v0"
    run_dir = prepare_run_dir(cfg)
    common = [f"seed={cfg.seed}", f"progress={cfg.progress}", f"threads={cfg.threads}", f"device={cfg.device}"]

    pre = load_config(
        "pretrain",
        ["objective=idm", f"objective.max_episodes={labelled}", f"run_dir={run_dir / 'idm'}", *common, *loop.idm],
    )
    pre.sequence = _sequence("vpt_idm", spec, loop.dataset, 1)
    run_encoder_pretraining(pre)
    lab = load_config(
        "label",
        [
            f"idm={run_dir / 'idm' / 'model'}",
            f"source={corpus}",
            f"dataset.id={pseudo}",
            "dataset.overwrite=true",
            f"run_dir={run_dir / 'label'}",
            *common,
        ],
    )
    labels = label(lab)
    result = {
        "dataset": loop.dataset,
        "fraction": float(loop.fraction),
        "labelled_episodes": labelled,
        "episodes": episodes,
        "seed": cfg.seed,
        "idm_action_mse": labels.get("action_mse"),
        "idm_action_r2": labels.get("action_r2"),
        "bc_pseudo_success": _bc(cfg, run_dir, "bc_pseudo", spec, pseudo, None),
        "bc_labelled_success": _bc(cfg, run_dir, "bc_labelled", spec, loop.dataset, labelled),
    }
    (run_dir / RESULT_FILE).write_text(json.dumps(result, indent=2))
    write_summary(run_dir, {"job": "label", "loop": True, **result, "seconds": time.perf_counter() - started})
    print(
        f"fraction {loop.fraction} ({labelled}/{episodes} episodes labelled): IDM action R² "
        f"{result['idm_action_r2']:.3f}; BC success on pseudo-labels {result['bc_pseudo_success']:.2f}, "
        f"on the labelled episodes alone {result['bc_labelled_success']:.2f}"
    )
    return result


def vpt_table(results: list[dict]) -> list[str]:
    """Markdown rows: per labelled fraction, mean [95% CI] over seeds of each figure."""
    from retain.aggregate import estimates, fmt_stats

    keys = ("idm_action_r2", "bc_pseudo_success", "bc_labelled_success")
    by_fraction: dict[float, list[dict]] = {}
    for r in results:
        by_fraction.setdefault(r["fraction"], []).append(r)
    lines = [
        "| labelled fraction | labelled episodes | IDM action R² | BC on pseudo-labels | BC on labelled only |",
        "|---|---|---|---|---|",
    ]
    for fraction in sorted(by_fraction):
        runs = by_fraction[fraction]
        stats = estimates({k: [[r[k]] for r in runs if r[k] is not None] for k in keys})
        cells = " | ".join(fmt_stats(stats[k]) for k in keys)
        lines.append(f"| {fraction} | {runs[0]['labelled_episodes']} of {runs[0]['episodes']} | {cells} |")
    return lines


class VptSweepReport(Callback):
    """``report.md`` in the sweep directory: every finished loop's figures by labelled fraction."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from retain.aggregate import describe

        sweep = Path(config.hydra.sweep.dir)
        results = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RESULT_FILE}"))]
        if not results:
            print(f"retain: no finished VPT loop under {sweep}", file=sys.stderr)
            return
        lines = [
            "# VPT loop: behaviour cloning on IDM pseudo-labels vs on the labelled fraction alone",
            "",
            f"Dataset `{results[0]['dataset']}`; success rates, mean over seeds [{describe()}], n = seeds. "
            "IDM action R²: the labels against the true actions (1: exact, 0: no better than their mean).",
            "",
            *vpt_table(results),
        ]
        (sweep / "report.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines[4:]))
        print(f"report: {sweep / 'report.md'}")
