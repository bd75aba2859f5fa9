"""The MPO objective against hand-computed values, its invariants, and its gradient paths."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from mpo.config import ObjectiveConfig
from mpo.trainer import MPOObjective, RewardShift, SequenceLogProbs, response_labels, sequence_logprobs
from tests.conftest import VOCAB_SIZE

LOG2 = math.log(2.0)


def softplus(x: float) -> float:
    """-log σ(-x) = log(1 + e^x)."""
    return math.log1p(math.exp(x))


def logps(summed: list[float], counts: list[int]) -> SequenceLogProbs:
    return SequenceLogProbs(torch.tensor(summed, requires_grad=True), torch.tensor(counts))


def test_each_term_matches_hand_arithmetic() -> None:
    objective = MPOObjective(ObjectiveConfig())  # β = 0.1, weights 0.8 / 0.2 / 1.0
    out = objective(
        logps([-1.0, -2.0], [2, 4]),
        logps([-3.0, -1.5], [3, 1]),
        torch.tensor([-1.5, -1.0]),
        torch.tensor([-2.0, -2.0]),
    )
    # z_c = 0.1·(−1 − −1.5) = 0.05 and 0.1·(−2 − −1) = −0.10
    # z_r = 0.1·(−3 − −2)   = −0.10 and 0.1·(−1.5 − −2) = 0.05
    # preference: −log σ(0.15) and −log σ(−0.15), i.e. softplus(−0.15) and softplus(0.15)
    preference = (softplus(-0.15) + softplus(0.15)) / 2
    # δ after this first micro-batch = mean(0.05, −0.10, −0.10, 0.05) = −0.025 (updated before use)
    # pair 1: −log σ(0.05 + 0.025) − log σ(−(−0.10 + 0.025)) = 2·softplus(−0.075)
    # pair 2: −log σ(−0.10 + 0.025) − log σ(−(0.05 + 0.025)) = 2·softplus(0.075)
    quality = (2 * softplus(-0.075) + 2 * softplus(0.075)) / 2
    # generation: chosen NLL summed 1 + 2 = 3 over 2 + 4 = 6 response tokens
    generation = 3.0 / 6.0
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["loss/preference"] == pytest.approx(preference, abs=1e-6)
    assert m["loss/quality"] == pytest.approx(quality, abs=1e-6)
    assert m["loss/generation"] == pytest.approx(generation, abs=1e-6)
    assert m["reward_shift"] == pytest.approx(-0.025, abs=1e-9)
    assert out.loss.item() == pytest.approx(0.8 * preference + 0.2 * quality + 1.0 * generation, abs=1e-6)
    assert m["loss"] == pytest.approx(out.loss.item())
    assert m["rewards/chosen"] == pytest.approx((0.05 - 0.10) / 2, abs=1e-6)
    assert m["rewards/rejected"] == pytest.approx((-0.10 + 0.05) / 2, abs=1e-6)
    assert m["rewards/margin"] == pytest.approx((0.15 - 0.15) / 2, abs=1e-6)
    assert m["rewards/accuracy"] == pytest.approx(0.5)  # pair 1 prefers the chosen, pair 2 does not


def test_weights_and_beta_are_configurable() -> None:
    config = ObjectiveConfig(beta=0.5, terms={"preference": 2.0, "generation": 0.5})
    out = MPOObjective(config)(logps([-1.0], [1]), logps([-2.0], [1]), torch.tensor([-2.0]), torch.tensor([-1.0]))
    # z_c = 0.5·1 = 0.5, z_r = 0.5·(−1) = −0.5 → preference softplus(−1); generation = 1.0
    assert out.loss.item() == pytest.approx(2.0 * softplus(-1.0) + 0.5 * 1.0, abs=1e-6)


@pytest.mark.parametrize(
    "terms",
    [{"preference": 1.0}, {"quality": 1.0}, {"generation": 1.0}, {"preference": 1.0, "generation": 1.0}],
)
def test_any_subset_of_terms_is_trainable_and_all_are_reported(terms: dict[str, float]) -> None:
    out = MPOObjective(ObjectiveConfig(terms=terms))(
        logps([-1.0, -2.0], [2, 2]),
        logps([-3.0, -1.0], [2, 2]),
        torch.tensor([-1.2, -2.5]),
        torch.tensor([-2.0, -1.0]),
    )
    reported = {name: out.metrics[f"loss/{name}"].item() for name in ("preference", "quality", "generation")}
    assert all(value > 0 for value in reported.values())
    assert out.loss.item() == pytest.approx(sum(w * reported[n] for n, w in terms.items()), abs=1e-6)


def test_preference_gradient_is_the_dpo_gradient() -> None:
    chosen, rejected = logps([-1.0], [1]), logps([-2.0], [1])
    out = MPOObjective(ObjectiveConfig(terms={"preference": 1.0}))(
        chosen, rejected, torch.tensor([-1.5]), torch.tensor([-1.5])
    )
    out.loss.backward()
    # d/d logπ(y_c) of −log σ(β(u_c − u_r)) = −β·σ(−β(u_c − u_r)); margin = 0.1·(0.5 − (−0.5)) = 0.1
    expected = -0.1 / (1 + math.exp(0.1))
    assert chosen.summed.grad.item() == pytest.approx(expected, abs=1e-7)
    assert rejected.summed.grad.item() == pytest.approx(-expected, abs=1e-7)


def test_policy_equal_to_reference_gives_zero_rewards_and_log2_losses() -> None:
    policy_chosen, policy_rejected = (
        logps([-4.0, -7.5, -1.0], [2, 3, 1]),
        logps([-2.0, -9.0, -3.0], [1, 4, 2]),
    )
    out = MPOObjective(ObjectiveConfig())(
        policy_chosen,
        policy_rejected,
        policy_chosen.summed.detach().clone(),
        policy_rejected.summed.detach().clone(),
    )
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["rewards/chosen"] == m["rewards/rejected"] == m["rewards/margin"] == 0.0
    assert m["reward_shift"] == 0.0
    assert m["loss/preference"] == pytest.approx(LOG2, abs=1e-7)
    assert m["loss/quality"] == pytest.approx(2 * LOG2, abs=1e-7)
    assert m["rewards/accuracy"] == 0.0


def test_gradient_reaches_the_policy_only(tiny_causal_lm) -> None:
    policy = tiny_causal_lm.train()
    reference = copy.deepcopy(policy).eval()
    for parameter in reference.parameters():
        parameter.requires_grad_(True)  # even a careless caller must not get reference gradients

    torch.manual_seed(3)
    chosen_ids, rejected_ids = torch.randint(1, VOCAB_SIZE, (2, 10)), torch.randint(1, VOCAB_SIZE, (2, 10))
    mask, prompt_lengths = torch.ones_like(chosen_ids), torch.tensor([4, 5])
    chosen_labels = response_labels(chosen_ids, prompt_lengths, mask)
    rejected_labels = response_labels(rejected_ids, prompt_lengths, mask)

    def run(model, ids, labels):
        return sequence_logprobs(model(input_ids=ids, attention_mask=mask).logits, labels)

    reference_chosen = run(reference, chosen_ids, chosen_labels).summed
    reference_rejected = run(reference, rejected_ids, rejected_labels).summed
    out = MPOObjective(ObjectiveConfig())(
        run(policy, chosen_ids, chosen_labels),
        run(policy, rejected_ids, rejected_labels),
        reference_chosen,
        reference_rejected,
    )
    out.loss.backward()

    policy_grads = [p.grad for p in policy.parameters()]
    assert all(g is not None for g in policy_grads)
    assert sum(g.abs().sum().item() for g in policy_grads) > 0
    assert all(p.grad is None for p in reference.parameters()), "reference log-probs were differentiated"


def test_reward_shift_is_the_cumulative_mean_over_micro_batches() -> None:
    torch.manual_seed(4)
    objective = MPOObjective(ObjectiveConfig())
    batch_means = []
    for step in range(6):
        pairs = 2 + step % 3
        chosen, rejected = (
            logps((torch.randn(pairs) * 3).tolist(), [1] * pairs),
            logps((torch.randn(pairs) * 3).tolist(), [1] * pairs),
        )
        ref_c, ref_r = torch.randn(pairs), torch.randn(pairs)
        out = objective(chosen, rejected, ref_c, ref_r)
        rewards = 0.1 * torch.cat([chosen.summed.detach() - ref_c, rejected.summed.detach() - ref_r])
        batch_means.append(rewards.double().mean().item())
        expected_delta = sum(batch_means) / len(batch_means)  # this batch included before δ is used
        assert out.metrics["reward_shift"].item() == pytest.approx(expected_delta, abs=1e-12)
        assert objective.reward_shift.count == step + 1


def test_evaluation_reads_delta_without_updating_it() -> None:
    objective = MPOObjective(ObjectiveConfig())
    objective(logps([-1.0], [1]), logps([-2.0], [1]), torch.tensor([-3.0]), torch.tensor([-3.0]))
    before = objective.state_dict()
    out = objective(logps([5.0], [1]), logps([5.0], [1]), torch.tensor([0.0]), torch.tensor([0.0]), training=False)
    assert objective.state_dict() == before
    assert out.metrics["reward_shift"].item() == before["reward_shift"]["mean"]


def test_resumed_objective_continues_identically() -> None:
    torch.manual_seed(5)
    batches = [
        (torch.randn(3), torch.randn(3), torch.randn(3), torch.randn(3), torch.randint(1, 5, (3,))) for _ in range(7)
    ]

    def step(objective: MPOObjective, batch) -> dict[str, float]:
        pc, pr, rc, rr, counts = batch
        out = objective(SequenceLogProbs(pc, counts), SequenceLogProbs(pr, counts), rc, rr)
        return {k: v.item() for k, v in out.metrics.items()}

    uninterrupted = MPOObjective(ObjectiveConfig())
    expected = [step(uninterrupted, batch) for batch in batches]

    first = MPOObjective(ObjectiveConfig())
    resumed_metrics = [step(first, batch) for batch in batches[:4]]
    saved = copy.deepcopy(first.state_dict())
    resumed = MPOObjective(ObjectiveConfig())
    resumed.load_state_dict(saved)
    resumed_metrics += [step(resumed, batch) for batch in batches[4:]]
    assert resumed_metrics == expected  # bit-for-bit, not approximately

    fresh = MPOObjective(ObjectiveConfig())
    assert step(fresh, batches[4]) != expected[4], "without the saved δ the continuation would differ"


def test_reward_shift_state_is_validated() -> None:
    shift = RewardShift()
    with pytest.raises(KeyError, match="count"):
        shift.load_state_dict({"mean": 0.3})
    with pytest.raises(ValueError, match="count"):
        shift.load_state_dict({"mean": 0.3, "count": -1})
    assert shift.state_dict() == {"mean": 0.0, "count": 0}


def test_mismatched_pair_tensors_are_rejected() -> None:
    with pytest.raises(ValueError, match="one size"):
        MPOObjective(ObjectiveConfig())(
            logps([-1.0, -2.0], [1, 1]), logps([-1.0], [1]), torch.tensor([-1.0, -1.0]), torch.tensor([-1.0])
        )
