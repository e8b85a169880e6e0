"""Data parallelism for the CPT trainer, applied from outside the model (as torchtitan does): DDP or FSDP2.

``retain cpt parallel=ddp|fsdp`` under ``torchrun --nproc_per_node=N`` trains the same transformers model
with its code untouched: DDP wraps it; FSDP2 (``torch.distributed.fsdp.fully_shard``) shards each
transformer block (the classes the model lists in ``_no_split_modules``) and then the root.
Without torchrun (no ``WORLD_SIZE``) the same command runs in one process.

Every rank draws the *same* global batch from the sampler (it is a pure function of its seed and step, and
reads memory-mapped shards, so this costs no I/O) and trains on its rows ``rank::world``. Each rank's loss is
a mean over the same number of tokens, so the gradient average DDP/FSDP take equals the single-process
gradient of the whole batch, and a run on N processes matches a run on one within float tolerance.

Checkpoints hold *full* (unsharded) state keyed by parameter name, whatever the mode, so a run saved with
``parallel=fsdp`` on 8 GPUs resumes with ``parallel=none`` on a laptop and the other way round.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from retain.errors import ConfigError

MODES = ("none", "ddp", "fsdp")


@dataclass
class Parallel:
    """The process group this process belongs to and how the model is spread over it."""

    mode: str = "none"
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp" and self.world > 1

    # -- setup -------------------------------------------------------------------------------------------

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: ``model`` itself (FSDP2 shards it in place) or a DDP wrapper around it."""
        if self.world == 1:
            return model
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            device = next(model.parameters()).device
            return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        device = next(model.parameters()).device
        mesh = init_device_mesh(device.type, (self.world,))
        blocks = set(getattr(model, "_no_split_modules", None) or [])
        if not blocks:
            raise ConfigError(
                f"{type(model).__name__} does not name its transformer blocks (_no_split_modules)",
                "use parallel=ddp for this model",
            )
        for module in model.modules():
            if type(module).__name__ in blocks:
                fully_shard(module, mesh=mesh)
        # The root too reshards after forward (FSDP2 keeps it gathered by default): after an evaluation or a
        # probe, model.parameters() must be the sharded parameters again, or a new stage's AdamW would hold
        # the gathered copies.
        fully_shard(model, mesh=mesh, reshard_after_forward=True)
        return model

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch."""
        return batch[self.rank :: self.world] if self.world > 1 else batch

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ConfigError(
                f"train.batch_size={batch_size} does not split over {self.world} processes",
                f"use a multiple of {self.world}",
            )

    def gradient_sync(self, train_model: torch.nn.Module, sync: bool):
        """A context for one micro-batch's backward: gradients are all-reduced only on the last one."""
        if self.world == 1 or sync:
            return contextlib.nullcontext()
        if self.mode == "ddp":
            return train_model.no_sync()
        train_model.set_requires_gradient_sync(False)
        return _restore_sync(train_model)

    # -- collectives -------------------------------------------------------------------------------------

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (the identity in one process)."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # -- full state, keyed by parameter name -------------------------------------------------------------

    def model_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full weights of ``model`` (the unwrapped module); a collective under FSDP that leaves the
        result on the main process only (the others get an empty dict)."""
        if not self.sharded:
            return model.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_model_state(self, model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
        if not self.sharded:
            model.load_state_dict(weights)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, full: bool = True) -> dict:
        """The optimizer's state with parameters named, not numbered (portable across modes).

        ``full=True`` (for checkpoints) gathers it on the main process only; ``full=False`` keeps each process's
        shard (to hand over to the next stage's optimizer in this run). Either way a collective under FSDP.
        """
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            options = StateDictOptions(full_state_dict=full, cpu_offload=full)
            return get_optimizer_state_dict(model, optimizer, options=options)
        names = [name for name, _ in model.named_parameters()]
        state = optimizer.state_dict()
        return {
            "state": {names[i]: value for i, value in state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state["param_groups"]],
        }

    def load_optimizer_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, full: bool = True
    ) -> None:
        """Load ``optimizer_state``'s output: ``full`` as read from a checkpoint by every process."""
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=full))
            return
        index = {name: i for i, (name, _) in enumerate(model.named_parameters())}
        optimizer.load_state_dict(
            {
                "state": {index[name]: value for name, value in state["state"].items()},
                "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in state["param_groups"]],
            }
        )


@contextlib.contextmanager
def _restore_sync(train_model: torch.nn.Module):
    try:
        yield
    finally:
        train_model.set_requires_gradient_sync(True)


def init_parallel(mode: str, device: torch.device) -> Parallel:
    """Join the process group torchrun set up (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``...), if any.

    gloo on CPU, NCCL on CUDA (each process on GPU ``LOCAL_RANK``). ``mode="none"`` under torchrun with
    more than one process is an error: every process would train its own copy and write the same files.
    """
    if mode not in MODES:
        raise ConfigError(f"unknown parallel={mode!r}", f"use one of {', '.join(MODES)}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Parallel(mode, 0, 1)
    if mode == "none":
        raise ConfigError(
            f"launched on {world} processes (torchrun) with parallel=none",
            "add parallel=ddp or parallel=fsdp, or run without torchrun",
        )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Parallel(mode, dist.get_rank(), dist.get_world_size())


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
