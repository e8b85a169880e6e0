"""Checkpoints: safetensors + weights_only state + JSON metadata, atomic, with clear errors."""

import json

import pytest
import torch

from retain.checkpoint import check_shapes, latest_checkpoint, load_checkpoint, save_checkpoint
from retain.errors import CheckpointError
from retain.seeding import derive_seed, rng_state, seed_everything, set_rng_state


def _save(root, step=10, **kw):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return (
        model,
        opt,
        save_checkpoint(
            root,
            step,
            model.state_dict(),
            {"optimizer": opt.state_dict(), "rng": rng_state(), "position": 7},
            meta={"note": "x"},
            **kw,
        ),
    )


def test_round_trip(tmp_path):
    model, opt, path = _save(tmp_path, arrays={"buffer": torch.arange(5.0)})
    weights, state, meta, arrays = load_checkpoint(path)
    assert torch.equal(weights["weight"], model.weight.detach())
    assert state["position"] == 7 and meta["step"] == 10 and meta["note"] == "x" and "torch" in meta["versions"]
    assert torch.equal(arrays["buffer"], torch.arange(5.0))
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    fresh.load_state_dict(state["optimizer"])  # optimizer state survives weights_only loading
    assert (path / "weights.safetensors").exists() and json.loads((path / "meta.json").read_text())["step"] == 10


def test_latest_points_at_newest_complete_checkpoint_and_prunes(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step)
    (tmp_path / ".step_000000000004.crashed").mkdir()  # a save killed midway leaves only a temp dir
    assert latest_checkpoint(tmp_path).name == "step_000000000003"
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_000000000002", "step_000000000003"]


def test_no_checkpoint_yet(tmp_path):
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("damage", ["missing_weights", "corrupt_weights", "corrupt_state", "corrupt_meta"])
def test_damaged_checkpoint_is_a_clear_error(tmp_path, damage):
    _, _, path = _save(tmp_path)
    if damage == "missing_weights":
        (path / "weights.safetensors").unlink()
    elif damage == "corrupt_weights":
        (path / "weights.safetensors").write_bytes(b"\x00garbage")
    elif damage == "corrupt_state":
        (path / "state.pt").write_bytes(b"not a torch file")
    else:
        (path / "meta.json").write_text("{")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_state_that_would_run_code_is_refused(tmp_path):
    _, _, path = _save(tmp_path)
    torch.save({"payload": Evil()}, path / "state.pt")
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        load_checkpoint(path)


def test_shape_mismatch_names_the_tensor():
    expected = torch.nn.Linear(3, 2).state_dict()
    with pytest.raises(CheckpointError, match=r"weight has shape \(2, 4\)"):
        check_shapes(expected, torch.nn.Linear(4, 2).state_dict(), "ckpt")
    with pytest.raises(CheckpointError, match="missing"):
        check_shapes(expected, {"weight": expected["weight"]}, "ckpt")


def test_rng_state_round_trip_through_weights_only(tmp_path):
    seed_everything(3)
    torch.save(rng_state(), tmp_path / "rng.pt")
    a = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    b = (torch.rand(2), __import__("numpy").random.rand(), __import__("random").random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_derived_seeds_are_stable_and_distinct():
    assert derive_seed(0, "train", 1, 2) == derive_seed(0, "train", 1, 2)
    assert len({derive_seed(0, "train", 1, c) for c in range(50)}) == 50
    assert derive_seed(0, "eval", 0) != derive_seed(1, "eval", 0)
