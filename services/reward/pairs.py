"""Correctness pairs (MMPR pipeline): for a prompt with ground truth, each correct sample is a chosen
response and each wrong one (unparsable included) a rejected response. Pure Python, so the rules can be
tested without a model and the service only maps protos in and out.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SKIP_NO_SAMPLES = "no samples"
SKIP_ALL_CORRECT = "all samples correct"
SKIP_ALL_WRONG = "all samples wrong"
SKIP_IDENTICAL = "every chosen response is identical to every rejected response"
SKIP_CONTAINS_TRUTH = "every wrong answer contains the correct answer"
SKIP_EMPTY = "every candidate pair has an empty response"


@dataclass(frozen=True)
class LabelledSample:
    """One sample of a prompt after answer extraction and verification."""

    #: Position among the prompt's n samples (`Sample.index`); unique within a prompt.
    index: int
    #: Full response text.
    text: str
    #: Extracted final answer; None when unparsable, which counts as wrong.
    answer: str | None
    correct: bool

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"sample index must be >= 0, got {self.index}")
        if self.correct and self.answer is None:
            raise ValueError(f"sample {self.index} is marked correct but has no parsable answer")


@dataclass(frozen=True)
class CorrectnessPair:
    chosen: LabelledSample
    rejected: LabelledSample


@dataclass
class PromptOutcome:
    """What happened to one prompt; the controller's statistics count the skip reasons."""

    pairs: list[CorrectnessPair] = field(default_factory=list)
    #: Why the prompt gave no pair (one of the SKIP_* strings); None when it gave at least one.
    skipped: str | None = None


def _normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def _is_word(char: str) -> bool:
    return char.isalnum() or char == "_"


def contains_truth(text: str, truth: str) -> bool:
    """Whether `text` mentions `truth` as a whole token, case-insensitively (MMPR's substring rule).

    Both are whitespace-normalised and case-folded; then an occurrence of `truth` counts unless it is
    glued to more of a word or number:
    - where `truth` starts (ends) with a letter, digit or "_", the character before (after) it must not be
      one, so "12" is not in "125" or "x12", and "cat" is not in "concatenate";
    - where `truth` starts (ends) with a digit, a "." or "," between digits continues the number, so "12"
      is not in "3.12", "12.5" or "12,000" (but is in "12, 13" and "is 12.");
    - where `truth` starts with a digit, a "-" or "+" sign directly before it (itself not after a letter
      or digit) makes it another number, so "12" is not in "-12" but is in "5-12" and "5 - 12".
    Edges of `truth` that are not word characters (e.g. "(B)", "$5") need no boundary.
    Beware of single-letter truths (multiple-choice labels): "A" matches the article "a".
    """
    haystack, needle = _normalise_whitespace(text).casefold(), _normalise_whitespace(truth).casefold()
    if not needle:
        raise ValueError("truth must not be blank")
    start = haystack.find(needle)
    while start != -1:
        if _whole_token(haystack, start, start + len(needle), needle):
            return True
        start = haystack.find(needle, start + 1)
    return False


def _whole_token(text: str, start: int, end: int, needle: str) -> bool:
    """Looks at the two characters on each side by index: slicing the text at every occurrence would cost
    quadratic time on a long response that repeats the truth."""
    before = text[start - 1] if start >= 1 else ""
    before_that = text[start - 2] if start >= 2 else ""
    after = text[end] if end < len(text) else ""
    after_that = text[end + 1] if end + 1 < len(text) else ""
    if _is_word(needle[0]) and before and _is_word(before):
        return False
    if _is_word(needle[-1]) and after and _is_word(after):
        return False
    if needle[0].isdigit() and before:
        if before_that and before in ".," and before_that.isdigit():
            return False
        if before in "-+" and not before_that.isalnum():
            return False
    return not (needle[-1].isdigit() and after_that and after in ".," and after_that.isdigit())


def correctness_pairs(
    prompt_id: str, samples: Sequence[LabelledSample], *, truth: str | None, max_pairs: int, seed: int
) -> PromptOutcome:
    """Build at most `max_pairs` (chosen = correct, rejected = wrong) pairs for one prompt.

    1. Candidates: every (correct, wrong) combination of the prompt's samples; unparsable samples are wrong.
    2. Deduplicate: candidates whose (chosen.text, rejected.text) are equal after whitespace normalisation
       are one pair (identical responses sampled twice must not weigh twice); the one with the lowest
       (chosen.index, rejected.index) stays. Candidates whose two texts are equal are dropped, and so are
       candidates with an empty (or blank) response: there is nothing to train on (the trainer refuses them).
    3. Substring rule: drop a candidate whose rejected text contains `truth` (see `contains_truth`); such a
       "wrong" response states the right answer somewhere, so it is a noisy negative. `truth=None` skips
       the rule: for multiple choice the truth is an option letter, and "A" would match the article "a".
    4. Cap: more than `max_pairs` left -> a uniform sample of `max_pairs` of them, drawn with
       random.Random(f"{seed}:{prompt_id}"), so the choice depends only on (seed, prompt_id) and the
       samples, never on which prompts were processed before. Pairs come sorted by
       (chosen.index, rejected.index).
    A prompt without pairs says why in `skipped`: no samples, all correct, all wrong (both tell how hard
    the prompts are), or every candidate dropped by rule 2 or 3.

    The candidates are counted, never listed: the cost is linear in the samples plus `max_pairs`, so one
    prompt with thousands of right and wrong answers (millions of candidates) stays cheap.

    Raises ValueError for `max_pairs` < 1, a blank `truth` or duplicate sample indices (the service
    answers INVALID_ARGUMENT).
    """
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be >= 1, got {max_pairs}")
    if truth is not None and not truth.strip():
        raise ValueError("truth must not be blank")
    indices = [sample.index for sample in samples]
    if len(set(indices)) != len(indices):
        raise ValueError(f"prompt {prompt_id!r}: duplicate sample indices")
    if not samples:
        return PromptOutcome([], SKIP_NO_SAMPLES)
    ordered = sorted(samples, key=lambda sample: sample.index)
    correct = [sample for sample in ordered if sample.correct]
    wrong = [sample for sample in ordered if not sample.correct]
    if not wrong:
        return PromptOutcome([], SKIP_ALL_CORRECT)
    if not correct:
        return PromptOutcome([], SKIP_ALL_WRONG)

    chosen, rejected = _distinct_texts(correct), _distinct_texts(wrong)
    if not chosen or not rejected or (len(chosen) == len(rejected) == 1 and chosen.keys() == rejected.keys()):
        return PromptOutcome([], SKIP_EMPTY if _any_blank(ordered) else SKIP_IDENTICAL)
    kept = {key: sample for key, sample in rejected.items() if truth is None or not contains_truth(sample.text, truth)}
    column_of = {key: column for column, key in enumerate(kept)}
    # Row r is the chosen text r against every kept rejected text but its own (the column skipped).
    rows = [(sample, column_of.get(key)) for key, sample in chosen.items()]
    count = sum(len(kept) - (skipped is not None) for _, skipped in rows)
    if not count:
        return PromptOutcome([], SKIP_CONTAINS_TRUTH)
    # Sampling positions from range(count) picks what sampling the listed candidates would, for the same seed.
    ranks = (
        range(count)
        if count <= max_pairs
        else sorted(random.Random(f"{seed}:{prompt_id}").sample(range(count), max_pairs))
    )
    return PromptOutcome(_candidates_at(ranks, rows, list(kept.values())), None)


def _distinct_texts(samples: Sequence[LabelledSample]) -> dict[str, LabelledSample]:
    """Each non-blank normalised text with its lowest-index sample (`samples` come in index order)."""
    distinct: dict[str, LabelledSample] = {}
    for sample in samples:
        key = _normalise_whitespace(sample.text)
        if key:
            distinct.setdefault(key, sample)
    return distinct


def _any_blank(samples: Sequence[LabelledSample]) -> bool:
    return any(not _normalise_whitespace(sample.text) for sample in samples)


def _candidates_at(
    ranks: Iterable[int], rows: Sequence[tuple[LabelledSample, int | None]], columns: Sequence[LabelledSample]
) -> list[CorrectnessPair]:
    """The candidates at the sorted `ranks` of the row-major order of `rows` x `columns`, each row without
    its skipped column: one pass over the rows, whatever the number of candidates."""
    pairs: list[CorrectnessPair] = []
    pending = iter(ranks)
    rank = next(pending, None)
    start = 0
    for chosen, skipped in rows:
        width = len(columns) - (skipped is not None)
        while rank is not None and rank < start + width:
            column = rank - start
            if skipped is not None and column >= skipped:
                column += 1
            pairs.append(CorrectnessPair(chosen, columns[column]))
            rank = next(pending, None)
        start += width
    return pairs
