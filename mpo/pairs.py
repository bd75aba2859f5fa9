"""Pairs and the prompts they answer: a pair carries its prompt inline (the legacy form) or names it by
`prompt_id`, the prompt then sent once beside the pairs, so a prompt's images travel, are stored and are
decoded once per prompt instead of once per pair (up to `max_pairs_per_prompt` times)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from mpo.v1 import common_pb2


def prompt_of(pair: common_pb2.PreferencePair, prompts: Mapping[str, common_pb2.Prompt]) -> common_pb2.Prompt:
    """The prompt `pair` answers: its own, or the one its `prompt_id` names (KeyError if none does)."""
    return pair.prompt if pair.HasField("prompt") else prompts[pair.prompt_id]


def prompts_by_id(prompts: Iterable[common_pb2.Prompt]) -> dict[str, common_pb2.Prompt]:
    return {prompt.id: prompt for prompt in prompts}


def referring(
    pairs: Sequence[common_pb2.PreferencePair], prompts: Sequence[common_pb2.Prompt] = ()
) -> tuple[list[common_pb2.Prompt], list[common_pb2.PreferencePair]]:
    """Copies of `pairs` that name their prompt by id, and those prompts, each once (first use order).

    Inline prompts are moved out by `Prompt.id`: pairs of one round share a prompt id only when they
    answer the same prompt. `prompts` resolves pairs that already refer to theirs.
    """
    known = prompts_by_id(prompts)
    used: dict[str, common_pb2.Prompt] = {}
    referred = []
    for pair in pairs:
        prompt = prompt_of(pair, known)
        used.setdefault(prompt.id, prompt)
        copy = common_pb2.PreferencePair()
        copy.CopyFrom(pair)
        copy.ClearField("prompt")
        copy.prompt_id = prompt.id
        referred.append(copy)
    return list(used.values()), referred


def named_prompts(
    prompts: Iterable[common_pb2.Prompt], pairs: Iterable[common_pb2.PreferencePair]
) -> list[common_pb2.Prompt]:
    """The prompts some pair names by id, in their own order: what a message sends beside its pairs."""
    named = {pair.prompt_id for pair in pairs}
    return [prompt for prompt in prompts if prompt.id in named]


def inlined(
    pairs: Iterable[common_pb2.PreferencePair], prompts: Sequence[common_pb2.Prompt]
) -> list[common_pb2.PreferencePair]:
    """Copies of `pairs` in the legacy form, each carrying the prompt it answers."""
    known = prompts_by_id(prompts)
    out = []
    for pair in pairs:
        copy = common_pb2.PreferencePair()
        copy.CopyFrom(pair)
        copy.ClearField("prompt_id")
        copy.prompt.CopyFrom(prompt_of(pair, known))
        out.append(copy)
    return out
