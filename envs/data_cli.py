"""``retain data list`` and ``retain data info <id|path|file.hdf5>``: what datasets exist and what is in one.

``info`` takes a Minari dataset (an id under RETAIN_DATA, or its directory) or a D4RL-layout HDF5 file
(``.hdf5``/``.h5``, or any existing HDF5 file), and prints the same statistics for both.
"""

from __future__ import annotations

import argparse
import json

from envs.datasets import data_root, dataset_info, list_datasets
from retain.errors import UserError


def _print_info(info: dict) -> None:
    ret, length = info["return"], info["episode_length"]
    rows = [
        ("dataset", info["id"]),
        ("path", info["path"]),
        ("format", info.get("format", "minari")),
        ("episodes", info["episodes"]),
        ("steps", info["steps"]),
        ("return", f"{ret['mean']:.3f} ± {ret['std']:.3f} (min {ret['min']:.3f}, max {ret['max']:.3f})"),
        ("episode length", f"{length['mean']:.1f} (min {length['min']}, max {length['max']})"),
        ("success rate", "–" if info["success_rate"] is None else f"{info['success_rate']:.3f}"),
        ("ref scores", f"min {info['ref_min_score']}, max {info['ref_max_score']}"),
        ("observation space", info["observation_space"]),
        ("action space", info["action_space"]),
        ("expert", info["expert"]),
    ]
    if "env_spec" in info:
        rows.append(("env spec", json.dumps(info["env_spec"])))
    if info.get("metadata"):
        rows.append(("metadata", json.dumps(info["metadata"])))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main(args: list[str]) -> int:
    from retain.errors import fail

    parser = argparse.ArgumentParser(
        prog="retain data", description="Datasets under RETAIN_DATA (default ~/.cache/retain/data)."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="every dataset: id, episodes, steps, expert")
    info = sub.add_parser(
        "info", help="one dataset: episodes, steps, return/success statistics, spaces, expert, env spec"
    )
    info.add_argument(
        "dataset",
        help="a dataset id (retain/<task>/<quality>-v0), a dataset directory, or a D4RL-layout file (.hdf5/.h5)",
    )
    info.add_argument("--json", action="store_true", help="print the statistics as JSON")
    parser.add_argument("--debug", action="store_true", help="print tracebacks")
    opts = parser.parse_args(args)
    try:
        if opts.command == "list":
            rows = list_datasets()
            if not rows:
                print(f"no datasets under {data_root()} — make some with `retain collect`")
            for row in rows:
                print(f"{row['id']:<50} {row['episodes']!s:>8} episodes {row['steps']!s:>10} steps  {row['expert']}")
        else:
            stats = dataset_info(opts.dataset)
            print(json.dumps(stats, indent=2)) if opts.json else _print_info(stats)
    except UserError as e:
        return fail(e.problem, e.fix, e, opts.debug)
    return 0
