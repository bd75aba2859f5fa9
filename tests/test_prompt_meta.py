"""A record's `meta` on the wire (`Prompt.meta_json`, mpo/data/meta.py): what travels, what is refused, and
the run-start check that keeps a round from being refused for its data."""

from __future__ import annotations

import datetime
import math
from pathlib import Path

import pytest

from mpo.config import ConfigError, RunConfig
from mpo.data.meta import MAX_META_DEPTH, decode_meta, encode_meta
from mpo.data.records import PromptRecord
from mpo.data.tasks import TASKS
from mpo.preflight import check_meta
from mpo.services.controller.loop import to_prompt


@pytest.mark.parametrize("task", ["shapes", "arith"])
def test_a_built_in_tasks_meta_arrives_as_it_was_with_its_integers_still_integers(task: str, tmp_path: Path) -> None:
    record = TASKS[task].generate(1, 7, tmp_path)[0]
    arrived = decode_meta(to_prompt(record).meta_json)
    assert repr(arrived) == repr(record.meta), "repr tells 3 from 3.0, which == does not"
    assert to_prompt(record.model_copy(update={"meta": {}})).meta_json == "", "no meta, nothing sent"


def test_numbers_json_cannot_hold_travel_as_null_and_other_values_as_their_text() -> None:
    meta = {"precision": math.nan, "scores": [1.5, math.inf, -math.inf], "day": datetime.date(2024, 5, 1)}
    assert decode_meta(encode_meta(meta)) == {"precision": None, "scores": [1.5, None, None], "day": "2024-05-01"}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{'a': 1}", "not valid JSON: "),
        ('"scene"', "must be a JSON object, got str"),
        ('{"a": Infinity}', "Infinity is not a JSON number"),
        ('{"a":' + "[" * MAX_META_DEPTH + "]" * MAX_META_DEPTH + "}", f"nested more than {MAX_META_DEPTH} deep"),
        ("[" * 100_000 + "]" * 100_000, f"nested more than {MAX_META_DEPTH} deep"),  # past the parser's recursion
    ],
)
def test_what_a_verifier_could_not_use_is_refused(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason.replace("[", r"\[")):
        decode_meta(text)


def test_the_deepest_meta_allowed_decodes() -> None:
    innermost: list = []
    for _ in range(MAX_META_DEPTH - 2):
        innermost = [innermost]
    text = '{"a":' + "[" * (MAX_META_DEPTH - 1) + "]" * (MAX_META_DEPTH - 1) + "}"
    assert decode_meta(text) == {"a": innermost}


def test_run_start_refuses_meta_above_the_strictest_services_limit() -> None:
    config = RunConfig.model_validate({"reward": {"server": {"limits": {"max_meta_bytes": 100}}}})
    fits = PromptRecord(id="a", question="Q?", task="arith", answer="1", meta={"note": "x" * 80})
    check_meta(config, [fits], "train")
    too_big = fits.model_copy(update={"id": "b", "meta": {"note": "x" * 100}})
    with pytest.raises(ConfigError) as caught:
        check_meta(config, [fits, too_big], "heldout")
    assert str(caught.value) == (
        "data.heldout: prompt 'b': meta is 111 bytes of JSON, above reward.server.limits.max_meta_bytes (100); "
        "raise the limit or drop columns from meta"
    )
    deep: dict = {}
    node = deep
    for _ in range(MAX_META_DEPTH):
        node["a"] = node = {}
    with pytest.raises(ConfigError, match=r"^data.train: prompt 'c': meta: nested more than 32 deep$"):
        check_meta(config, [fits.model_copy(update={"id": "c", "meta": deep})], "train")
    # A data file may nest deeper than Python's recursion limit allows the encoder to follow.
    abyss: list = []
    for _ in range(5_000):
        abyss = [abyss]
    with pytest.raises(ConfigError, match=r"^data.train: prompt 'd': meta: nested more than 32 deep$"):
        check_meta(config, [fits.model_copy(update={"id": "d", "meta": {"x": abyss}})], "train")
