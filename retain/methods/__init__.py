"""Continual-learning methods, one file each, as hook sets over the runner (see ``base.py``).

``make_method(cfg)`` builds one from its config (a ``method/`` config group entry): the config is checked
against the method's own typed config, so an unknown key or a bad value fails before anything runs.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from retain.errors import ConfigError
from retain.methods.agem import AGEM
from retain.methods.base import Method, MethodConfig
from retain.methods.ewc import EWC
from retain.methods.finetune import Finetune
from retain.methods.l2 import L2
from retain.methods.mas import MAS
from retain.methods.multitask import Multitask
from retain.methods.packnet import PackNet
from retain.methods.replay import Replay
from retain.methods.reset import Reset

METHODS: dict[str, type[Method]] = {
    "finetune": Finetune,
    "reset": Reset,
    "multitask": Multitask,
    "l2": L2,
    "ewc": EWC,
    "mas": MAS,
    "replay": Replay,
    "agem": AGEM,
    "packnet": PackNet,
}

__all__ = ["METHODS", "Method", "MethodConfig", "make_method"]


def make_method(cfg: Any) -> Method:
    """The method ``cfg`` names (a dict, DictConfig or dataclass with ``name``), its config typed and checked."""
    container = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    if not isinstance(container, dict):
        container = dict(vars(container))
    name = container.get("name")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}", f"use method= one of {', '.join(METHODS)}")
    method = METHODS[name]
    try:
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(method.Config), container))
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"method {name}: {str(e).splitlines()[0]}", f"see configs/method/{name}.yaml for its keys"
        ) from e
    return method(typed)
