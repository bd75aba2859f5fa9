"""DropoutNTP pairs (MMPR, docs/design.md §4) for prompts without ground truth.

Chosen = the policy's own answer. Its first fraction of words is continued by the policy *without the
images* (RolloutService.Continue, drop_images); rejected = that prefix + the image-less continuation,
which tends to drift from what the image shows. The continuation may run only as far as the chosen
answer did (`Continuation.max_total_tokens`): given more room, a blind continuation that keeps listing
objects makes the rejected side the longer one, and the pair teaches "say less" rather than "say what the
image shows". Held to that bound, a blind continuation that would have gone on is cut unfinished, and the
pair can still teach "stop listing": `finished_only` keeps only continuations that ended on their own, and
`unterminated` cuts both sides to the same number of words, less closing punctuation, and trains them
without the end-of-turn token, so that neither side's ending is part of the lesson. `match_length` holds the
continuation to the chosen answer's length from below as well (`Continuation.min_total_tokens`): it may not
end before the chosen answer did, so a blind side that would have stopped early names as much as the chosen
one, and both sides train with their end of turn. A task's mention counter (`mpo/grading/mentions.py`) can
guard the pairs instead: a pair is dropped when its blind side names fewer things than the chosen side, as a
pair that teaches "name more" is not one about the image.
Prompts without images cannot tell the two apart and are skipped with a reason.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mpo.grading.mentions import MentionCounter
from mpo.serving.clients import RolloutClient
from mpo.v1 import common_pb2, rollout_pb2

_WORD = re.compile(r"\S+")
_CLOSING = string.punctuation + string.whitespace
SKIP_NO_IMAGE = "no_image_for_dropout_ntp"
SKIP_TOO_SHORT = "answers_too_short_for_dropout_ntp"


def first_words(text: str, count: int) -> str:
    """The text up to the end of its `count`-th word (original spacing kept); all of it when it has fewer."""
    words = list(_WORD.finditer(text))
    if count >= len(words):
        return text
    return text[: words[count - 1].end()] if count > 0 else ""


def word_prefix(text: str, fraction: float) -> str | None:
    """The text up to the end of its first `fraction` of words; None when that keeps no word or every word
    (nothing would be left to continue)."""
    words = len(_WORD.findall(text))
    keep = int(words * fraction)
    return first_words(text, keep) if 0 < keep < words else None


def same_length(chosen: str, rejected: str) -> tuple[str, str]:
    """Both sides cut to the word count of the shorter one, less any closing punctuation: a full stop where
    one side ended would teach where to stop. What remains differs in what it says. (Dropping the shorter
    side's last word instead was measured to drop its last named object, so the pairs taught "name fewer".)"""
    keep = min(len(_WORD.findall(chosen)), len(_WORD.findall(rejected)))
    return first_words(chosen, keep).rstrip(_CLOSING), first_words(rejected, keep).rstrip(_CLOSING)


@dataclass(frozen=True)
class DropoutJob:
    prompt: common_pb2.Prompt
    sample: common_pb2.Sample
    prefix: str


def plan(
    prompt: common_pb2.Prompt, samples: Sequence[common_pb2.Sample], *, fraction: float, max_pairs: int, seed: int
) -> tuple[list[DropoutJob], str | None]:
    """Which samples of one prompt get a continuation (at most `max_pairs`, seeded), or why none."""
    if not prompt.images:
        return [], SKIP_NO_IMAGE
    jobs = [
        DropoutJob(prompt, sample, prefix)
        for sample in sorted(samples, key=lambda s: s.index)
        if (prefix := word_prefix(sample.text, fraction)) is not None
    ]
    if not jobs:
        return [], SKIP_TOO_SHORT
    if len(jobs) > max_pairs:
        jobs = sorted(random.Random(f"{seed}:{prompt.id}").sample(jobs, max_pairs), key=lambda j: j.sample.index)
    return jobs, None


def blind_sampling(like: common_pb2.SamplingParams | None, *, max_tokens: int, seed: int) -> common_pb2.SamplingParams:
    """One continuation per job, at most `max_tokens`, seeded, drawn as `like` draws (its temperature, top-p,
    top-k and stop strings): the round's sampling, so that the sides differ in the image only. None: at
    temperature 1.0."""
    sampling = common_pb2.SamplingParams(n=1, temperature=1.0, max_tokens=max_tokens, seed=seed)
    if like is not None:
        sampling.temperature, sampling.top_p, sampling.top_k = like.temperature, like.top_p, like.top_k
        sampling.stop.extend(like.stop)
    return sampling


def least_tokens(sample: common_pb2.Sample) -> int:
    """The chosen answer's length in tokens less its end of turn, the last token of an answer that ended
    on its own: a continuation held to at least this, and at most the whole length, ends where the chosen
    answer did or is cut one token later. 0 (no floor) for a sample without token ids."""
    ended = sample.finish_reason == common_pb2.FINISH_REASON_STOP
    return max(0, len(sample.token_ids) - 1) if ended else len(sample.token_ids)


@dataclass
class BlindPairs:
    """DropoutNTP's pairs of one request, in job order, and what became of the continuations not paired."""

    pairs: list[common_pb2.PreferencePair] = field(default_factory=list)
    #: Continuations cut at their bound (their pairs not built when only finished ones are kept).
    cut: int = 0
    #: Pairs dropped by their task's mention counter: the rejected side named fewer things.
    fewer_mentions: int = 0


async def continue_without_images(
    client: RolloutClient,
    jobs: Sequence[DropoutJob],
    *,
    sampling: common_pb2.SamplingParams,
    round_index: int,
    finished_only: bool = False,
    unterminated: bool = False,
    match_length: bool = False,
    mention_counters: Mapping[str, MentionCounter] | None = None,
) -> BlindPairs:
    """One Continue call for all jobs (the rollout service batches them). `unterminated`: both sides cut to
    the same number of words, the pair marked so the trainer leaves out the end-of-turn token.
    `match_length`: each continuation held from below to its chosen answer's length too (`least_tokens`).
    `mention_counters` (task -> counter): a pair of a mapped task is kept only when its rejected side, as
    trained, names at least as many things as its chosen side."""
    result = BlindPairs()
    if not jobs:
        return result
    continuations = [
        rollout_pb2.Continuation(
            prompt=j.prompt,
            prefix=j.prefix,
            drop_images=True,
            max_total_tokens=len(j.sample.token_ids),
            min_total_tokens=least_tokens(j.sample) if match_length else 0,
        )
        for j in jobs
    ]
    response = await client.continue_prefixes(continuations, sampling)
    counters = mention_counters or {}
    for job, continuation in zip(jobs, response.samples, strict=True):
        if continuation.finish_reason == common_pb2.FINISH_REASON_LENGTH:
            result.cut += 1
            if finished_only:
                continue
        chosen, rejected = job.sample.text, job.prefix + continuation.text
        if unterminated:
            chosen, rejected = same_length(chosen, rejected)
        if rejected == chosen:
            continue  # the image-less policy said the same thing: no preference to learn
        if not (chosen and rejected):
            continue  # the cut left a side only punctuation: nothing to prefer, and a pair needs its text
        counter = counters.get(job.prompt.task)
        if counter is not None and counter.count(rejected) < counter.count(chosen):
            result.fewer_mentions += 1
            continue
        result.pairs.append(
            common_pb2.PreferencePair(
                id=f"r{round_index}-{job.prompt.id}-d{job.sample.index}",
                prompt_id=job.prompt.id,
                chosen=chosen,
                rejected=rejected,
                source=common_pb2.PAIR_SOURCE_DROPOUT_NTP,
                unterminated=unterminated,
                provenance=common_pb2.Provenance(
                    policy_version=min(job.sample.policy_version, continuation.policy_version),
                    round=round_index,
                    chosen_sample_index=job.sample.index,
                    rejected_sample_index=job.sample.index,
                ),
            )
        )
    return result
