"""SAC's objective on a given batch, for methods that need a loss beside SB3's own step (A-GEM's reference
gradient on an episodic memory). It is the objective ``stable_baselines3.SAC.train`` minimizes — twin-Q critic
loss against the target critics with the entropy bonus, and the actor loss against the critics' minimum — on
the batch given instead of a fresh replay sample; SAC's training loop itself stays SB3's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from stable_baselines3 import SAC
from stable_baselines3.common.type_aliases import ReplayBufferSamples


def sac_losses(model: SAC, batch: ReplayBufferSamples) -> tuple[torch.Tensor, torch.Tensor]:
    """``(actor_loss, critic_loss)`` of ``model`` on ``batch``."""
    actions_pi, log_prob = model.actor.action_log_prob(batch.observations)
    log_prob = log_prob.reshape(-1, 1)
    if model.ent_coef_optimizer is not None and model.log_ent_coef is not None:
        ent_coef = torch.exp(model.log_ent_coef.detach())
    else:
        ent_coef = model.ent_coef_tensor
    with torch.no_grad():
        next_actions, next_log_prob = model.actor.action_log_prob(batch.next_observations)
        next_q = torch.cat(model.critic_target(batch.next_observations, next_actions), dim=1)
        next_q = next_q.min(dim=1, keepdim=True).values - ent_coef * next_log_prob.reshape(-1, 1)
        target = batch.rewards + (1 - batch.dones) * model.gamma * next_q
    critic_loss = 0.5 * sum(F.mse_loss(q, target) for q in model.critic(batch.observations, batch.actions))
    q_pi = torch.cat(model.critic(batch.observations, actions_pi), dim=1).min(dim=1, keepdim=True).values
    actor_loss = (ent_coef * log_prob - q_pi).mean()
    return actor_loss, critic_loss
