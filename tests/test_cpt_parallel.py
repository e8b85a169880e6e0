"""`retain cpt` under torchrun: 2 gloo processes with DDP and with FSDP2 train the same model as one process.

Every rank draws the same global batch and trains on its rows, so the data-parallel gradient equals the
single-process one: R and the final weights agree within float tolerance. Checkpoints are full and keyed by
parameter name, so an FSDP run's checkpoint resumes in a single process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pretrain.cpt.job import run_cpt
from retain.config import load_config
from tests.conftest import RETAIN
from tests.test_cpt_job import TINY

pytestmark = pytest.mark.slow


def _cpt(run_dir, *overrides: str, nproc: int = 1, data=None) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RETAIN_DATA": str(data)}
    # fp32: the check is that N processes compute the one-process gradient, not bf16 rounding noise
    args = [
        *(launcher if nproc > 1 else []),
        RETAIN,
        "cpt",
        f"run_dir={run_dir}",
        *TINY,
        "train.precision=fp32",
        *overrides,
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=run_dir.parent)


def _outputs(run_dir) -> tuple[dict, dict[str, torch.Tensor]]:
    results = json.loads((run_dir / "results.json").read_text())
    return results, load_file(run_dir / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpt_parallel")
    proc = _cpt(root / "single", data=root / "data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, _outputs(root / "single")


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_gloo_processes_match_one(single, mode):
    root, (expected, weights) = single
    run_dir = root / mode
    proc = _cpt(run_dir, f"parallel={mode}", nproc=2, data=root / "data")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results, got = _outputs(run_dir)
    for row, want in zip(results["matrix"] + [results["initial"]], expected["matrix"] + [expected["initial"]]):
        assert row == pytest.approx(want, abs=1e-4)
    assert got.keys() == weights.keys()
    assert all(torch.allclose(got[k], weights[k], atol=1e-4) for k in weights)
    assert (run_dir / "metrics.jsonl").exists() and (run_dir / "report.md").exists()
    if mode == "fsdp":
        # The FSDP run's last checkpoint (full state, named parameters) resumes in one process.
        cfg = load_config("cpt", [f"run_dir={run_dir}", *TINY, "train.precision=fp32", "resume=true", "parallel=none"])
        os.environ["RETAIN_DATA"] = str(root / "data")
        try:
            summary = run_cpt(cfg)
        finally:
            del os.environ["RETAIN_DATA"]
        assert summary["steps"] == json.loads((run_dir / "summary.json").read_text())["steps"]


def test_torchrun_without_a_parallel_mode_is_refused(tmp_path):
    proc = _cpt(tmp_path / "run", nproc=2, data=tmp_path / "data")
    assert proc.returncode != 0
    assert "parallel=none" in proc.stderr and "parallel=ddp" in proc.stderr
    assert not (tmp_path / "run").exists()
