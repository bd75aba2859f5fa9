"""Degenerate answers: the failure the MPO paper counts against DPO alone (an answer that loops, runs
into the token limit, or never states a final answer), measured on held-out answers each round.

The three kinds are judged from what a sample already carries (its token ids, why it stopped, and the
reward service's verdict), so measuring them costs no extra generation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mpo.v1 import common_pb2, reward_pb2

#: Longest repeated unit looked for, in tokens: a sentence-sized loop.
MAX_LOOP_TOKENS = 16
#: A loop is a unit repeated back to back at least this often ...
MIN_LOOP_REPEATS = 3
#: ... spanning at least this many tokens, so short legitimate repeats ("1 + 1 + 1") are not loops.
MIN_LOOP_SPAN = 24


def has_repetition_loop(
    token_ids: Sequence[int],
    *,
    max_unit: int = MAX_LOOP_TOKENS,
    min_repeats: int = MIN_LOOP_REPEATS,
    min_span: int = MIN_LOOP_SPAN,
) -> bool:
    """Whether some unit of 1..`max_unit` tokens repeats back to back `min_repeats` times or more over at
    least `min_span` tokens. A stretch with period n is a run of positions where token i equals token
    i + n; a run of r such positions covers r + n tokens. O(max_unit × length)."""
    for unit in range(1, max_unit + 1):
        needed = max(min_repeats * unit, min_span)
        run = 0
        for i in range(len(token_ids) - unit):
            run = run + 1 if token_ids[i] == token_ids[i + unit] else 0
            if run + unit >= needed:
                return True
    return False


@dataclass(frozen=True)
class Degeneracy:
    """Which ways one answer is degenerate (it may be several at once)."""

    no_final_answer: bool
    repetition_loop: bool
    truncated: bool

    @property
    def degenerate(self) -> bool:
        return self.no_final_answer or self.repetition_loop or self.truncated

    @classmethod
    def of(cls, token_ids: Sequence[int], *, truncated: bool, no_final_answer: bool) -> Degeneracy:
        """One answer judged from its tokens and the two facts its producer knows (served or offline)."""
        return cls(no_final_answer=no_final_answer, repetition_loop=has_repetition_loop(token_ids), truncated=truncated)


def judge_degeneracy(sample: common_pb2.Sample, verdict: reward_pb2.Verdict) -> Degeneracy:
    """`verdict` is the reward service's for this sample; a prompt without ground truth
    (VERDICT_NO_GROUND_TRUTH, e.g. `describe`) has no final answer to miss."""
    return Degeneracy.of(
        sample.token_ids,
        truncated=sample.finish_reason == common_pb2.FINISH_REASON_LENGTH,
        no_final_answer=verdict == reward_pb2.VERDICT_UNPARSABLE,
    )
