"""SB3's objectives on a given batch, for methods that need a loss beside SB3's own step (A-GEM's reference
gradient on an episodic memory). For SAC it is the objective ``stable_baselines3.SAC.train`` minimizes — twin-Q
critic loss against the target critics with the entropy bonus, and the actor loss against the critics' minimum —
on the batch given instead of a fresh replay sample; for PPO and A2C the policy-gradient objective on a stored
rollout batch. SB3's training loops themselves stay SB3's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.type_aliases import ReplayBufferSamples, RolloutBufferSamples


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


def policy_gradient_loss(model: OnPolicyAlgorithm, batch: RolloutBufferSamples) -> torch.Tensor:
    """PPO's and A2C's objective on a stored rollout batch, at the policy that collected it: −A·log π(a|s) with
    the batch's advantages (normalized as PPO does), plus ``vf_coef``·(V(s) − R)² and the entropy bonus. It is
    PPO's clipped surrogate's gradient where the ratio is 1; on a memory of an earlier task the ratio against
    the collecting policy would be clipped away, so the unclipped form is the loss a memory can give."""
    actions = batch.actions
    if isinstance(model.action_space, spaces.Discrete):
        actions = actions.long().flatten()
    values, log_prob, entropy = model.policy.evaluate_actions(batch.observations, actions)
    advantages = batch.advantages
    if getattr(model, "normalize_advantage", False) and len(advantages) > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    entropy = -log_prob if entropy is None else entropy
    return (
        -(advantages * log_prob).mean()
        + model.vf_coef * F.mse_loss(batch.returns, values.flatten())
        - model.ent_coef * entropy.mean()
    )
