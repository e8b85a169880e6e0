"""The ``retain`` command: ``retain <job> [hydra overrides]``.

Each job is a function ``run_<job>(cfg) -> dict`` callable without Hydra; this module only finds
it, composes its config with Hydra (``--help``, ``--cfg job`` and ``-m`` work as in any Hydra app)
and turns user errors into one line on stderr with exit code 2. Jobs are imported lazily, so
``retain --help`` stays fast and ``retain/`` depends on the other packages only through ``JOBS``.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

from omegaconf import OmegaConf

from retain.errors import UserError, fail
from retain.jobs import JOBS, load_job, register_job_schemas


def usage() -> str:
    width = max(map(len, JOBS))
    lines = ["usage: retain <job> [key=value ...] [--help] [--cfg job] [-m]", "", "jobs:"]
    lines += [f"  {name:<{width}}  {job.help}" for name, job in JOBS.items()]
    lines += [
        "",
        "common keys: seed= run_dir= resume=true|false progress=true|false debug=true|false|fast logger=jsonl|tensorboard|wandb device=auto|cpu|cuda",
        "`retain <job> --help` shows the job's config groups and values.",
    ]
    return "\n".join(lines)


def _normalise(args: list[str], job: str) -> list[str]:
    # `debug` is both a common true/false key and a config group (debug/true.yaml, debug/fast.yaml):
    # Hydra reads debug=true as a boolean, so the CLI passes it on as the option's name. `debug=fast`
    # picks the job's own smoke-test option (debug/fast_<job>.yaml) when it has one.
    from retain.config import config_dir

    def option(match: re.Match) -> str:
        name = match.group(1).lower()
        if name == "fast" and (config_dir() / "debug" / f"fast_{job}.yaml").exists():
            name = f"fast_{job}"
        return f'debug="{name}"'

    return [re.sub(r'^debug="?(true|false|fast)"?$', option, a, flags=re.I) for a in args]


def _hydra_error(exc: BaseException) -> str:
    lines = [
        ln.strip()
        for ln in str(exc).splitlines()
        if ln.strip()
        and "HYDRA_FULL_ERROR" not in ln
        and not ln.strip().startswith(("full_key", "object_type", "reference_type"))
    ]
    return "; ".join(lines[:3]) or type(exc).__name__


def _validate(job: str, overrides: list[str]):
    """Compose the config once before Hydra's runner does, so bad overrides get one clear line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from retain.config import check_common, load_config

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as e:
            raise UserError(
                f"cannot parse override {override!r} ({_hydra_error(e).split(';')[0]})",
                "write key=value, quoting values with special characters",
            ) from e
    try:
        cfg = load_config(job, overrides)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise UserError(
            f"bad override for `retain {job}`: {_hydra_error(e)}", f"see `retain {job} --help` for the groups and keys"
        ) from e
    check_common(cfg)
    return cfg


def _task(job: str):
    run = load_job(job)

    def task(cfg):
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
        cfg.run_dir = str(run_dir)
        resumed = bool(cfg.resume)
        try:
            return run(cfg)
        except KeyboardInterrupt:
            print(
                f"\nretain: interrupted — continue with: retain {job} run_dir={run_dir} resume=true (and the same overrides)",
                file=sys.stderr,
            )
            sys.exit(130)
        except UserError as e:
            # The CLI checked the directory was new or empty: nothing half-written stays (unless worth keeping).
            if not resumed and not e.keep_outputs:
                shutil.rmtree(run_dir, ignore_errors=True)
            sys.exit(fail(e.problem, e.fix, e, bool(cfg.get("traceback", False))))

    return task


def run_job(job: str, args: list[str]) -> int:
    import hydra

    from retain.config import config_dir

    overrides = _normalise([a for a in args if not a.startswith("-")], job)
    flags = [a for a in args if a.startswith("-")]
    debug = any(re.match(r'^debug="?(true|fast)"?$', a, flags=re.I) for a in overrides)
    multirun = "-m" in flags or "--multirun" in flags
    informational = any(f in ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "--resolve") for f in flags)
    register_job_schemas(job)
    try:
        if not informational:
            cfg = _validate(job, [o for o in overrides if "," not in o] if multirun else overrides)
            if not multirun:
                _check_run_dir(cfg)
    except UserError as e:
        return fail(e.problem, e.fix, e, debug)
    sys.argv = [f"retain-{job}", *_interleave(args, overrides)]
    hydra.main(config_path=str(config_dir()), config_name=job, version_base="1.3")(_task(job))()
    return 0


def _interleave(args: list[str], overrides: list[str]) -> list[str]:
    """Map each original argument to its normalised form (flags keep their place)."""
    it = iter(overrides)
    return [a if a.startswith("-") else next(it) for a in args]


def _check_run_dir(cfg) -> None:
    run_dir = Path(str(cfg.run_dir))
    if cfg.resume:
        if not (run_dir / "config.yaml").exists():
            raise UserError(
                f"resume=true but {run_dir} holds no run", "pass run_dir= of the run to continue, or drop resume=true"
            )
    # Hydra's own files (.hydra/, <job>.log) do not make a run: under torchrun another process's Hydra may
    # have written them a moment before this check
    elif run_dir.exists() and any(p.name != ".hydra" and p.suffix != ".log" for p in run_dir.iterdir()):
        raise UserError(
            f"run directory {run_dir} is not empty",
            "pass resume=true to continue the run there, or choose another run_dir=",
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    job, args = argv[0], argv[1:]
    if job not in JOBS:
        return fail(f"unknown job {job!r}", f"choose one of {', '.join(JOBS)} (`retain --help` lists them)")
    if JOBS[job].schema is None:
        return load_job(job)(args)
    return run_job(job, args)


if __name__ == "__main__":
    sys.exit(main())
