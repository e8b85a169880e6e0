"""Representation objectives for ``retain pretrain objective=<name>``, one file each, all trained by
``pretrain.encoder_learner``: inverse dynamics (``idm``), behaviour cloning (``bc``), explicit forward
dynamics (``fd``), contrastive forward dynamics (``fd_contrastive``) and contrastive without actions
(``contrastive``)."""

from __future__ import annotations

from pretrain.objectives.base import Objective, ObjectiveSettings
from pretrain.objectives.bc import BehaviourCloning
from pretrain.objectives.contrastive import Contrastive
from pretrain.objectives.fd import ForwardDynamics
from pretrain.objectives.fd_contrastive import ContrastiveForward
from pretrain.objectives.idm import InverseDynamics

OBJECTIVE_CLASSES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (InverseDynamics, BehaviourCloning, ForwardDynamics, ContrastiveForward, Contrastive)
}

__all__ = ["OBJECTIVE_CLASSES", "Objective", "ObjectiveSettings"]
