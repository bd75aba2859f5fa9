"""Model-based scoring behind one interface, next to the verifiers (issue #6 part 5).

A `Scorer` turns (prompt, response) into a scalar reward that Score reports beside the verdict. The
one built in, `LogProbScorer`, is the mean token log-probability of the response under a causal LM
(e.g. a reference or reward-tuned tiny model): cheap, deterministic, and it runs on the tiny models.
Image-text scorers plug in the same way; this one reads the question text only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from mpo.config import ScorerConfig
from mpo.data.records import PromptRecord
from mpo.models.demonstrations import DemonstrationBatcher
from mpo.models.generate import TransformersGenerator
from mpo.models.logprobs import sequence_logprobs
from mpo.v1 import common_pb2


class Scorer(Protocol):
    def score(self, items: Sequence[tuple[common_pb2.Prompt, str]]) -> list[float]:
        """One reward per (prompt, response), in order."""
        ...


class LogProbScorer:
    def __init__(self, model_dir: Path, *, batch_size: int = 32, trust_remote_code: bool = False) -> None:
        self.generator = TransformersGenerator(model_dir, trust_remote_code=trust_remote_code)
        if self.generator.image_text:
            raise ValueError(f"LogProbScorer takes a text model; {model_dir} is image-text")
        self.generator.model.eval()
        self.batcher = DemonstrationBatcher(self.generator, cache_prompts=False)
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, items: Sequence[tuple[common_pb2.Prompt, str]]) -> list[float]:
        rewards: list[float] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            examples = [(PromptRecord(id=p.id, question=p.question, task=p.task), text) for p, text in chunk]
            batch = self.batcher.batch(examples)
            labels = batch.pop("labels")
            logprobs = sequence_logprobs(self.generator.model(**batch).logits, labels)
            rewards.extend((logprobs.summed / logprobs.token_counts.clamp(min=1)).tolist())
        return rewards


def create_scorer(config: ScorerConfig | None) -> Scorer | None:
    if config is None:
        return None
    return LogProbScorer(config.model, trust_remote_code=config.trust_remote_code)
