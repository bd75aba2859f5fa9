"""The MPO objective against TRL's own DPO loss on the same tokens (docs/design.md §3).

A real `trl.DPOTrainer` (TRL 1.16, the `dev` extra's pin) tokenises the pairs with the chat template,
collates them with its own collator and computes its loss through its fused LM head. `MPOObjective` gets
log-probs computed our way (`mpo.models.logprobs`) for the very same token ids, its labels taken from
TRL's completion mask (TRL's completion also holds the newline the template writes after the
end-of-turn token; the loss must agree given identical tokens, whatever the labelling rule). TRL 1.16's
`bco_pair` has no reward shift, so the two agree at δ = 0 (a fresh `RewardShift`, read without
updating) and must disagree on the quality term once δ ≠ 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from trl import DPOConfig, DPOTrainer

from mpo.config import TRL_LOSS_TYPE, ObjectiveConfig
from mpo.models.tiny import TextModelSpec, build_text_model
from mpo.trainer import IGNORE_INDEX, MPOObjective, RewardShift, SequenceLogProbs, model_logprobs

BETA = 0.1
WEIGHTS = {"preference": 0.8, "quality": 0.2, "generation": 1.0}
PAIRS = [
    ("What is 2 + 3?", "2 + 3 = 5. The answer is 5.", "The answer is 6."),
    ("What is 7 + 1?", "7 + 1 = 8, so 8.", "It is 9, since 7 + 1 = 9."),
    ("What is 4 + 4?", "Four and four make 8.", "8"),
    ("Add 12 and 9.", "12 + 9 = 21. The answer is 21.", "12 + 9 = 20."),
]
SPEC = TextModelSpec(vocab_size=320, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=64)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny policy, and a reference that differs from it by noise on every weight."""
    root = tmp_path_factory.mktemp("trl-models")
    corpus = [text for pair in PAIRS for text in pair] * 4
    policy_dir = build_text_model(root / "policy", corpus, SPEC, seed=0)
    reference = AutoModelForCausalLM.from_pretrained(policy_dir)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
    reference.save_pretrained(root / "reference")
    return policy_dir, root / "reference"


def load(path: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def dpo_trainer(model_dirs: tuple[Path, Path], tmp_path: Path, terms: dict[str, float]) -> DPOTrainer:
    """TRL's trainer on fresh model copies (it patches their forward) with the MPO terms as TRL loss types."""
    policy_dir, reference_dir = model_dirs
    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        loss_type=[TRL_LOSS_TYPE[name] for name in terms],
        loss_weights=list(terms.values()),
        beta=BETA,
        per_device_train_batch_size=len(PAIRS),
        bf16=False,
        use_cpu=True,
        report_to=[],
        seed=0,
    )
    dataset = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
            }
            for prompt, chosen, rejected in PAIRS
        ]
    )
    return DPOTrainer(
        model=load(policy_dir),
        ref_model=load(reference_dir),
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(policy_dir),
    )


def split(logps: SequenceLogProbs) -> tuple[SequenceLogProbs, SequenceLogProbs]:
    """TRL's batch holds every chosen row, then every rejected row."""
    half = logps.summed.shape[0] // 2
    return (
        SequenceLogProbs(logps.summed[:half], logps.token_counts[:half]),
        SequenceLogProbs(logps.summed[half:], logps.token_counts[half:]),
    )


def ours(model_dirs: tuple[Path, Path], batch: dict[str, torch.Tensor], shift: RewardShift) -> dict[str, float]:
    """MPOObjective's loss and terms on TRL's token ids, log-probs computed our way."""
    policy_dir, reference_dir = model_dirs
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["input_ids"].masked_fill(batch["completion_mask"] == 0, IGNORE_INDEX),
    }
    policy_chosen, policy_rejected = split(model_logprobs(load(policy_dir), inputs))
    with torch.no_grad():
        reference_chosen, reference_rejected = split(model_logprobs(load(reference_dir), inputs))
    out = MPOObjective(ObjectiveConfig(beta=BETA, terms=WEIGHTS), shift)(
        policy_chosen, policy_rejected, reference_chosen.summed, reference_rejected.summed, training=False
    )
    return {"loss": out.loss.item()} | {name: out.metrics[f"loss/{name}"].item() for name in WEIGHTS}


def test_objective_matches_trl_dpo_trainer_loss_at_zero_shift(model_dirs: tuple[Path, Path], tmp_path: Path) -> None:
    mixed = dpo_trainer(model_dirs, tmp_path, WEIGHTS)
    batch = next(iter(mixed.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 2 * len(PAIRS)
    assert (batch["completion_mask"].sum(dim=1) > 0).all()

    trl = {"loss": mixed.compute_loss(mixed.model, batch).item()}
    for name in WEIGHTS:  # each term alone, through TRL's loss for that loss type with weight 1
        single = dpo_trainer(model_dirs, tmp_path, {name: 1.0})
        trl[name] = single.compute_loss(single.model, batch).item()

    mpo = ours(model_dirs, batch, RewardShift())
    assert mpo == pytest.approx(trl, rel=1e-5, abs=1e-7)
    # The check has teeth: the policy and the reference differ (equal models give log 2 and 2·log 2).
    assert trl["preference"] != pytest.approx(math.log(2), rel=1e-3)
    assert trl["quality"] != pytest.approx(2 * math.log(2), rel=1e-3)

    shifted = RewardShift()
    shifted.load_state_dict({"mean": 0.5, "count": 3})
    with_delta = ours(model_dirs, batch, shifted)
    assert with_delta["quality"] != pytest.approx(trl["quality"], rel=1e-3)
    assert with_delta["loss"] != pytest.approx(trl["loss"], rel=1e-3)
    assert with_delta["preference"] == pytest.approx(trl["preference"], rel=1e-5)
    assert with_delta["generation"] == pytest.approx(trl["generation"], rel=1e-5)
