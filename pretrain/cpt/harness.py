"""lm-evaluation-harness on a ``retain cpt`` model, offline: the synthetic-biography knowledge probes as local
lm-eval tasks, plus any harness task whose data the user has.

``write_tasks`` turns ``<bios_dir>/probes.jsonl`` into four multiple-choice tasks (people seen in training or never
seen × completion or question form), each a task YAML and a JSONL data file loaded through lm-eval's
``dataset_path: json`` with local ``data_files``. A choice is scored as lm-eval scores any multiple-choice task: the
summed log-likelihood of ``" " + choice`` after the prompt. The never-seen people are the chance baseline: the model
has never read their facts, so what it gets right there it got from guessing and from the values' frequencies.

``evaluate`` runs ``lm_eval.simple_evaluate`` with ``HFLM`` on the model folder, with the hub and datasets offline
unless asked otherwise. ``python -m pretrain.cpt.harness <model_dir> --bios <bios_dir>`` prints a table and writes
``harness.json``. lm-eval is the optional extra ``retain[harness]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from retain.errors import CheckpointError, ConfigError, DatasetError, UserError

GROUP = "retain_bios"
"""the tag naming every probe task: ``--tasks retain_bios`` runs them all (no average: seen and unseen differ)"""
TASKS = [f"{GROUP}_{who}_{form}" for who in ("seen", "unseen") for form in ("completion", "qa")]
PROBE_KEYS = ("person", "seen", "attribute", "form", "prompt", "answer", "choices")


def not_installed() -> UserError:
    return UserError("lm-evaluation-harness is not installed", "pip install 'retain[harness]'")


def _read_probes(probes_jsonl: Path) -> list[dict]:
    if not probes_jsonl.is_file():
        raise DatasetError(
            f"{probes_jsonl} does not exist",
            "pass the biographies folder a `retain cpt` run wrote (RETAIN_DATA/cpt/bios-...), which holds probes.jsonl",
        )
    probes = []
    for lineno, line in enumerate(probes_jsonl.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            probe = json.loads(line)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{probes_jsonl}:{lineno} is not JSON ({e.msg})") from e
        missing = [k for k in PROBE_KEYS if k not in probe]
        if missing:
            raise DatasetError(
                f"{probes_jsonl}:{lineno} lacks {', '.join(missing)}", f"a probe has {', '.join(PROBE_KEYS)}"
            )
        if probe["answer"] not in probe["choices"]:
            raise DatasetError(f"{probes_jsonl}:{lineno}: the answer {probe['answer']!r} is not among the choices")
        probes.append(probe)
    return probes


def _task_yaml(name: str, data_file: Path, cache_dir: Path, source: Path) -> dict[str, Any]:
    return {
        "task": name,
        "tag": [GROUP],
        # lm-eval 0.4 loads local files as the HF `json` builder with data_files; paths are absolute because
        # datasets resolves relative ones against the working directory, not this file.
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}, "cache_dir": str(cache_dir)},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "prompt",  # field names, not Jinja: a QA prompt holds a newline
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
        "metadata": {"version": 1.0, "source": str(source)},
    }


def write_tasks(probes_jsonl: str | Path, out_dir: str | Path) -> list[str]:
    """Write the probe tasks of ``probes_jsonl`` to ``out_dir`` (``<task>.yaml`` and ``<task>.jsonl`` each) and
    return their names, in ``TASKS`` order; a group with no probes (no held-out people) gets no task.
    ``out_dir`` is then an lm-eval ``include_path``."""
    import yaml

    from retain.io import write_text_atomic

    source = Path(probes_jsonl).resolve()
    probes = _read_probes(source)
    out = Path(out_dir).resolve()
    names = []
    for name in TASKS:
        who, form = name.removeprefix(f"{GROUP}_").split("_")
        rows = [
            {**p, "label": p["choices"].index(p["answer"])}
            for p in probes
            if p["seen"] == (who == "seen") and p["form"] == form
        ]
        if not rows:
            continue
        data = out / f"{name}.jsonl"
        write_text_atomic(data, "".join(json.dumps(r) + "\n" for r in rows))
        header = f"# written by pretrain/cpt/harness.py from {source}: {len(rows)} probes\n"
        body = yaml.safe_dump(_task_yaml(name, data, out / ".hf_cache", source), sort_keys=False)
        write_text_atomic(out / f"{name}.yaml", header + body)
        names.append(name)
    if not names:
        raise DatasetError(f"{source} holds no probes", "regenerate the biographies with probes")
    return names


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF hub and datasets offline for the block: the environment for what imports them later, and the constants of
    what already did (both read the variables once, at import)."""
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    patched = [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE")]
    patched += [(datasets.config, "HF_DATASETS_OFFLINE")] if hasattr(datasets.config, "HF_DATASETS_OFFLINE") else []
    saved = [getattr(module, attr) for module, attr in patched]
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for module, attr in patched:
        setattr(module, attr, True)
    try:
        yield
    finally:
        for (module, attr), value in zip(patched, saved):
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"


def _metrics(raw: dict[str, Any]) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": .., "acc_stderr,none": ..}`` as ``{"acc": .., "acc_stderr": ..}`` (other filters keep
    their ``,filter`` suffix; a stderr of ``"N/A"`` becomes None)."""
    out = {}
    for key, value in raw.items():
        if key == "alias" or "," not in key:
            continue
        metric, _, filt = key.partition(",")
        out[metric if filt == "none" else key] = None if value == "N/A" else value
    return out


def evaluate(
    model_dir: str | Path,
    tasks: Sequence[str] | None = None,
    bios_dir: str | Path | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    include_path: str | Path | Sequence[str | Path] | None = None,
    task_dir: str | Path | None = None,
    offline: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run lm-evaluation-harness on the transformers folder ``model_dir``; return ``{task: {"acc", "acc_stderr",
    "acc_norm", "acc_norm_stderr", ..., "samples"}}`` (every metric the task reports, filter ``none`` unsuffixed;
    the probe tasks add ``chance``, the mean of 1/choices over the documents scored).

    ``tasks`` are task, group or tag names (default: every probe task of ``bios_dir``, which needs ``bios_dir``);
    the probe tasks are written to ``task_dir`` (default a temporary folder) and found there, other names in
    ``include_path`` folders and then among lm-eval's own tasks (indexed only when a name is not found locally).
    ``limit`` caps the documents per task (a fraction below 1: that share). ``device`` ``"auto"`` picks CUDA when
    there is one. With ``offline`` (default) the HF hub and datasets are not contacted: every task's data must be on
    disk.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise not_installed() from e

    model_dir = Path(model_dir).expanduser()
    if not (model_dir / "config.json").is_file():
        raise CheckpointError(
            f"{model_dir} is not a transformers model folder (no config.json)", "pass <run_dir>/model"
        )
    if tasks is None and bios_dir is None:
        raise ConfigError("nothing to evaluate", "pass the biographies folder (--bios) or task names (--tasks)")
    wanted = list(tasks) if tasks is not None else [GROUP]
    includes = [] if include_path is None else [include_path] if isinstance(include_path, str | Path) else include_path
    includes = [Path(p).expanduser().resolve() for p in includes]
    for path in includes:
        if not path.is_dir():
            raise ConfigError(f"include path {path} is not a folder", "pass a folder of lm-eval task YAMLs")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

    with contextlib.ExitStack() as stack:
        if bios_dir is not None:
            if task_dir is None:
                task_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="retain_harness_"))
            write_tasks(Path(bios_dir).expanduser() / "probes.jsonl", task_dir)
            includes.insert(0, Path(task_dir).resolve())
        elif any(name.startswith(GROUP) for name in wanted):
            raise ConfigError(f"the {GROUP} tasks need the biographies", "pass bios_dir (--bios <folder>)")
        if offline:
            stack.enter_context(_offline())

        # lm-eval's own ~15k task YAMLs take seconds to index: only when a name is not found locally.
        manager = TaskManager(include_path=includes or None, include_defaults=False)
        if any(name not in manager.all_tasks for name in wanted):
            manager = TaskManager(include_path=includes or None)
        unknown = [name for name in wanted if name not in manager.all_tasks]
        if unknown:
            raise ConfigError(
                f"unknown lm-eval task(s) {', '.join(unknown)}", "check the names, or pass the folder of their YAMLs"
            )
        try:
            lm = HFLM(pretrained=str(model_dir), device=device, batch_size=batch_size)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{model_dir} cannot be loaded ({_first_line(e)})") from e
        try:
            results = lm_eval.simple_evaluate(
                model=lm, tasks=wanted, task_manager=manager, limit=limit, log_samples=False
            )
        except ConnectionError as e:  # a task whose data is not on disk, offline
            raise DatasetError(
                f"a task's data is not on disk ({_first_line(e)})",
                "point its YAML at local files (dataset_path: json, dataset_kwargs.data_files), or pass --online",
            ) from e
        samples = {task: n["effective"] for task, n in results.get("n-samples", {}).items()}
        out = {task: {**_metrics(raw)} for task, raw in results["results"].items()}
        for task, metrics in out.items():
            if task in samples:
                metrics["samples"] = samples[task]
            if task in TASKS and bios_dir is not None:  # exact chance of the documents scored (limit takes the first)
                rows = (Path(task_dir) / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()[: samples.get(task)]
                metrics["chance"] = sum(1 / len(json.loads(row)["choices"]) for row in rows) / len(rows)
    return out


def _table(results: dict[str, dict[str, Any]]) -> str:
    """acc and acc_norm per task; other metrics are in harness.json."""

    def cell(value: Any, stderr: Any = None) -> str:
        if not isinstance(value, int | float):
            return "—"
        return f"{value:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, int | float) else "")

    width = max(len("task"), *map(len, results))
    lines = [f"{'task':<{width}}  {'acc':>13}  {'acc_norm':>13}  {'chance':>6}  {'n':>5}"]
    for task, m in results.items():
        acc, norm = cell(m.get("acc"), m.get("acc_stderr")), cell(m.get("acc_norm"), m.get("acc_norm_stderr"))
        lines.append(f"{task:<{width}}  {acc:>13}  {norm:>13}  {cell(m.get('chance')):>6}  {m.get('samples', ''):>5}")
    return "\n".join(lines)


def _limit(text: str) -> int | float:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def run_bios(model_dir: Path) -> Path | None:
    """The biographies folder of the ``retain cpt`` run whose ``model/`` this is (its first ``builtin:bios``
    source, regenerated from the run's config when missing: the corpus is deterministic); None otherwise."""
    config = Path(model_dir).expanduser().resolve().parent / "config.yaml"
    if Path(model_dir).name != "model" or not config.is_file():
        return None
    from omegaconf import OmegaConf

    from pretrain.cpt.job import _builtin

    cfg = OmegaConf.load(config)
    for source in (cfg.get("sources") or {}).values():
        if str(source.get("path", "")).split(":")[:2] == ["builtin", "bios"]:
            return _builtin(source.path.split(":", 1)[1], cfg)[0].parent
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="retain cpt-eval",
        description="lm-evaluation-harness on a `retain cpt` model: the biography probes and any local harness task.",
    )
    parser.add_argument("model_dir", type=Path, help="a transformers model folder, e.g. <run_dir>/model")
    parser.add_argument(
        "--bios",
        type=Path,
        help="the biographies folder holding probes.jsonl (the retain_bios tasks); default: the run's own, when "
        "model_dir is a retain cpt run's model/",
    )
    parser.add_argument("--tasks", help="comma-separated task, group or tag names (default: retain_bios)")
    parser.add_argument(
        "--include-path", action="append", type=Path, default=[], help="a folder of task YAMLs (repeatable)"
    )
    parser.add_argument("--limit", type=_limit, help="documents per task (below 1: a share); for smoke tests")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: CUDA when there is one)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a busy machine: 2 can be 50x slower)")
    parser.add_argument("--task-dir", type=Path, help="write the retain_bios task YAMLs here and keep them")
    parser.add_argument("--online", action="store_true", help="let the HF hub and datasets download")
    parser.add_argument(
        "--output", type=Path, help="default: harness.json beside <run_dir>/model, else in the model folder"
    )
    args = parser.parse_args(argv)
    if args.bios is None:
        args.bios = run_bios(args.model_dir)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        results = evaluate(
            args.model_dir,
            tasks=tasks,
            bios_dir=args.bios,
            limit=args.limit,
            batch_size=args.batch_size,
            device=args.device,
            include_path=args.include_path,
            task_dir=args.task_dir,
            offline=not args.online,
        )
    except UserError as e:
        from retain.errors import fail

        return fail(e.problem, e.fix)
    from importlib.metadata import version

    from retain.io import write_json_atomic

    model_dir = args.model_dir.expanduser().resolve()
    output = args.output or (model_dir.parent if model_dir.name == "model" else model_dir) / "harness.json"
    record = {
        "model": str(model_dir),
        "bios": str(args.bios.expanduser().resolve()) if args.bios else None,
        "tasks": tasks or [GROUP],
        "include_path": [str(p) for p in args.include_path],
        "limit": args.limit,
        "lm_eval_version": version("lm_eval"),
        "results": results,
    }
    write_json_atomic(output, record)
    print(_table(results))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
