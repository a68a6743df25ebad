"""Direct preference optimisation losses on per-sequence logprobs.

With ``beta`` the KL strength and the difference of policy/reference log-ratios::

    h = (logp_chosen - ref_chosen) - (logp_rejected - ref_rejected)

the per-pair losses are

    sigmoid: -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)
    ipo:     (h - 1 / (2 * beta)) ** 2

``sigmoid`` with ``eps = 0`` is DPO (https://arxiv.org/abs/2305.18290, eq. 7); ``eps > 0``
is conservative DPO, which assumes each preference label is flipped with probability
``eps`` (Mitchell 2023, "A note on DPO with noisy preferences"; TRL's
``label_smoothing``). ``ipo`` is IPO (https://arxiv.org/abs/2310.12036, eq. 17), which
regresses ``h`` onto ``1 / (2 * beta)`` instead of pushing it to infinity.

``log sigmoid`` is computed with ``F.logsigmoid`` so that a large ``|beta * h|`` cannot
overflow. Reference logprobs are detached. The normaliser ``num_pairs`` is passed in, not
taken from the batch size, so that a batch split into micro-batches and ranks sums to
exactly the loss (and metrics) of the whole batch.
"""

from typing import Literal

import torch
import torch.nn.functional as F

LossType = Literal["sigmoid", "ipo"]


def comparable_logprobs(summed: torch.Tensor, lengths: torch.Tensor, loss_type: LossType) -> torch.Tensor:
    """What the loss compares: summed logprobs for DPO, averaged over each response's tokens for IPO.

    Args:
        summed: ``[2, B]`` chosen (row 0) and rejected (row 1) logprobs summed over their tokens.
        lengths: ``[2, B]`` their token counts.
    """
    return summed / lengths if loss_type == "ipo" else summed


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    num_pairs: int,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: LossType = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the batch's mean preference loss.

    Args:
        policy_chosen: ``[B]`` policy logprob of each chosen response, summed over its tokens.
        policy_rejected: ``[B]`` the same for the rejected responses.
        reference_chosen: ``[B]`` reference logprobs of the chosen responses (no gradient).
        reference_rejected: ``[B]`` reference logprobs of the rejected responses (no gradient).
        num_pairs: preference pairs in the whole batch, across micro-batches and ranks.
        beta: strength of the implicit KL penalty towards the reference.
        label_smoothing: ``eps`` of conservative DPO; 0 is plain DPO. ``sigmoid`` only.
        loss_type: ``sigmoid`` (DPO, cDPO) or ``ipo``. For ``ipo`` pass logprobs averaged
            over each response's tokens rather than summed, as in the IPO paper; the
            target margin ``1 / (2 * beta)`` assumes that scale.

    Returns:
        Scalar ``loss = sum(per-pair loss) / num_pairs`` and detached 0-dim metrics, each
        this micro-batch's share of the batch mean (summing over micro-batches and ranks
        gives the batch mean): ``rewards/chosen`` ``beta * (logp_chosen - ref_chosen)``,
        ``rewards/rejected``, ``rewards/margin`` (chosen minus rejected) and
        ``rewards/accuracy``, the fraction of pairs whose chosen reward is higher.
    """
    chosen_ratio = policy_chosen - reference_chosen.detach()  # [B]
    rejected_ratio = policy_rejected - reference_rejected.detach()  # [B]
    h = chosen_ratio - rejected_ratio  # [B]
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if label_smoothing != 0.0:
            raise ValueError(f"label_smoothing={label_smoothing} applies to loss_type='sigmoid' only, not 'ipo'")
        losses = (h - 1.0 / (2.0 * beta)).square()
    else:
        raise ValueError(f"loss_type={loss_type!r}: expected sigmoid or ipo")
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()  # [B]
    metrics = {
        "rewards/chosen": chosen_reward.sum() / num_pairs,
        "rewards/rejected": rejected_reward.sum() / num_pairs,
        "rewards/margin": (chosen_reward - rejected_reward).sum() / num_pairs,
        "rewards/accuracy": (chosen_reward > rejected_reward).float().sum() / num_pairs,
    }
    return losses.sum() / num_pairs, metrics
