"""What is checked before a run starts anything: the model's template, the data, its tasks and its meta.

`mpo run` (before Ray, vLLM or DeepSpeed start) and the controller's StartRun (before the run is
stored) call `check_run`, so a config that cannot run fails in seconds with an error naming the field,
not at the first Generate after minutes of start-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mpo.chat import ChatRenderer, TemplateError
from mpo.config import ConfigError, RunConfig
from mpo.data.meta import encode_meta
from mpo.data.records import PromptRecord
from mpo.data.sources import load_split
from mpo.grading.hallucination import described_scenes

#: Services that validate every prompt: its task against `server.limits.known_tasks`, its meta against
#: `server.limits.max_meta_bytes`.
_PROMPT_CHECKING = ("rollout", "reward", "trainer")


def check_template(config: RunConfig) -> None:
    """The policy's chat template renders the configured conversation and ends assistant turns."""
    if config.rollout is None:
        return
    try:
        ChatRenderer(config.rollout.model, prompt=config.prompt, trust_remote_code=config.rollout.trust_remote_code)
    except TemplateError as error:
        raise ConfigError(f"model: {error}") from error
    except (OSError, ValueError) as error:  # not a model directory, unknown architecture, remote code refused
        raise ConfigError(f"model: {config.rollout.model}: cannot load its tokenizer or processor: {error}") from error


def check_tasks(config: RunConfig, records: Sequence[PromptRecord], split: str) -> None:
    """Every task in the data is one each service accepts, which is also one a verifier is chosen for."""
    tasks: dict[str, str] = {}
    for record in records:
        tasks.setdefault(record.task, record.id)
    for section in _PROMPT_CHECKING:
        service = getattr(config, section)
        if service is None:
            continue
        known = set(service.server.limits.known_tasks)
        unknown = sorted(task for task in tasks if task not in known)
        if unknown:
            first = unknown[0]
            raise ConfigError(
                f"data.{split}: task {first!r} (first in prompt {tasks[first]!r}) has no verifier: map it in "
                f"reward.verifiers (a plug-in) or reward.task_verifiers (a built-in), or add it to "
                f"{section}.server.limits.known_tasks (known: {', '.join(sorted(known))})"
            )


def check_meta(config: RunConfig, records: Sequence[PromptRecord], split: str) -> None:
    """Every record's `meta` travels as JSON within each service's `max_meta_bytes`; otherwise the first
    round carrying that prompt would be refused after minutes of start-up."""
    limits = {
        section: service.server.limits.max_meta_bytes
        for section in _PROMPT_CHECKING
        if (service := getattr(config, section)) is not None
    }
    for record in records:
        try:
            text = encode_meta(record.meta)
        except ValueError as error:
            raise ConfigError(f"data.{split}: prompt {record.id!r}: meta: {error}") from error
        size = len(text.encode())
        for section, limit in limits.items():
            if size > limit:
                raise ConfigError(
                    f"data.{split}: prompt {record.id!r}: meta is {size} bytes of JSON, above "
                    f"{section}.server.limits.max_meta_bytes ({limit}); raise the limit or drop columns from meta"
                )


def check_run(config: RunConfig, *, image_dir: Path) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """All checks, the held-out scenes judged for hallucination among them; returns the train and held-out
    records (images written to `image_dir`)."""
    assert config.data is not None
    train = load_split(config.data, "train", image_dir=image_dir).records
    heldout = load_split(config.data, "heldout", image_dir=image_dir).records
    check_template(config)
    check_tasks(config, train, "train")
    check_tasks(config, heldout, "heldout")
    check_meta(config, train, "train")
    check_meta(config, heldout, "heldout")
    try:
        described_scenes(heldout)  # the round loop judges these answers for hallucination
    except ValueError as error:
        raise ConfigError(f"data.heldout: {error}") from error
    return train, heldout
