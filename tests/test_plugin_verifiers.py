"""Plug-in verifiers outside the package (mpo/plugins.py): both spec forms, the config check and its errors,
the return values, the Grader that labelling and evaluation share, and held-out evaluation with a real tiny
model. The reward service running them in its labelling workers: tests/test_reward_service.py."""

from __future__ import annotations

import re
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mpo.config import ConfigError, RewardConfig, load_config
from mpo.data.records import PromptRecord
from mpo.evaluation import evaluate, is_correct
from mpo.grading.verify import Grader, VerifierFailed
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.models.tiny import build_text_model
from mpo.plugins import as_score, check_verifier_spec, load_verifier
from tests.rollout_helpers import CORPUS, SMALL

VERIFIERS = '''
    import numpy as np

    CALLS = []


    def contains(response, record):
        """Right when the truth is one of the response's words."""
        CALLS.append((response, record))
        return record.answer in response.split()


    def overlap(response, record, *, weight=1.0):
        """The share of the truth's words the response has: a score."""
        words = record.answer.split()
        return weight * sum(word in response.split() for word in words) / len(words)


    def by_meta(response, record):
        CALLS.append((response, record))
        return record.meta["expect"]


    def explode(response, record):
        raise ZeroDivisionError("boom " * 100)


    def maybe(response, record):
        return "maybe"


    class Judge:
        def check(self, response, record):
            return np.bool_(response.endswith(record.answer))


    judge = Judge()
    not_callable = 3


    def one_argument(response):
        return True


    async def later(response, record):
        return True
'''


@pytest.fixture
def plugin_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "my_verifiers.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(VERIFIERS))
    return path


def record(answer: str | None = "blue", task: str = "mine", **meta: object) -> PromptRecord:
    return PromptRecord(id="q1", question="Which colour?", answer=answer, choices=None, task=task, meta=meta)


def test_path_and_module_forms_name_callables_outside_the_package(
    plugin_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_path = load_verifier(f"{plugin_file}:contains")
    assert by_path("it is blue", record()) and not by_path("it is bluish", record())
    monkeypatch.chdir(plugin_file.parent.parent)
    relative = check_verifier_spec("outside/my_verifiers.py:judge.check")
    assert relative == f"{plugin_file}:judge.check", "a relative path is made absolute where the config is checked"
    assert load_verifier(relative)("it is blue", record())
    assert load_verifier(f"{plugin_file}:contains") is by_path, "a file is executed once per process"
    monkeypatch.syspath_prepend(str(plugin_file.parent))
    by_module = load_verifier("my_verifiers:overlap")
    assert by_module("red green", record("red green blue")) == pytest.approx(2 / 3)
    assert by_module is not load_verifier(f"{plugin_file}:overlap"), "module and file form are separate modules"


def write_config(tmp_path: Path, reward: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("reward:\n" + textwrap.indent(textwrap.dedent(reward), "  "))
    return path


@pytest.mark.parametrize(
    ("reward", "field", "message"),
    [
        ("verifiers: {mine: 'no_such_module_xyz:check'}", "reward.verifiers.mine",
         "cannot import 'no_such_module_xyz': ModuleNotFoundError"),
        ("verifiers: {mine: '{dir}/broken.py:check'}", "reward.verifiers.mine",
         "cannot import '{dir}/broken.py': RuntimeError: half-written"),
        ("verifiers: {mine: '{dir}/nowhere.py:check'}", "reward.verifiers.mine", "no such file: {dir}/nowhere.py"),
        ("verifiers: {mine: '{file}:missing'}", "reward.verifiers.mine", "has no attribute 'missing'"),
        ("verifiers: {mine: '{file}:one_argument'}", "reward.verifiers.mine",
         "'one_argument' must take (response, record); its signature is (response)"),
        ("verifiers: {mine: '{file}:not_callable'}", "reward.verifiers.mine", "is not callable (a 'int')"),
        ("verifiers: {mine: '{file}:later'}", "reward.verifiers.mine", "'later' is async"),
        ("verifiers: {mine: 'check'}", "reward.verifiers.mine", "is not 'package.module:callable' or"),
        ("verifiers: {mine: 'my-verifiers:check'}", "reward.verifiers.mine", "neither a module name nor a path"),
        ("answer_pattern: 'ANSWER: ('", "reward.answer_pattern", "not a regular expression"),
        ("answer_pattern: 'ANSWER'", "reward.answer_pattern", "needs exactly one capture group (the answer), found 0"),
        ("answer_pattern: '(A)(B)'", "reward.answer_pattern", "found 2"),
        ("correct_threshold: 0", "reward.correct_threshold", "greater than 0"),
        ("verifiers: {arith: '{file}:contains'}", "reward",
         "task 'arith' is mapped twice: reward.task_verifiers.arith ('numeric', by default) and reward.verifiers"),
        ("task_verifiers: {mine: exact}\nverifiers: {mine: '{file}:contains'}", "reward",
         "task 'mine' is mapped twice: reward.task_verifiers.mine ('exact') and reward.verifiers.mine"),
    ],
)  # fmt: skip
def test_config_errors_name_the_field(tmp_path: Path, plugin_file: Path, reward: str, field: str, message: str) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('half-written')\n")
    fill = {"{file}": str(plugin_file), "{dir}": str(tmp_path)}
    for key, value in fill.items():
        reward, message = reward.replace(key, value), message.replace(key, value)
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, reward))
    lines = str(caught.value).splitlines()[1:]
    assert any(line.startswith(f"  {field}: ") and message in line for line in lines), lines


def test_a_valid_config_keeps_the_absolute_spec(tmp_path: Path, plugin_file: Path) -> None:
    config = load_config(write_config(tmp_path, f"verifiers: {{mine: '{plugin_file}:overlap'}}\n")).reward
    assert config.verifiers == {"mine": f"{plugin_file}:overlap"}
    assert (config.correct_threshold, config.answer_pattern) == (0.5, None)


@pytest.mark.parametrize(
    ("value", "score"),
    [(True, 1.0), (False, 0.0), (np.bool_(True), 1.0), (0, 0.0), (1, 1.0), (0.25, 0.25), (Fraction(3, 4), 0.75),
     (np.float32(0.5), 0.5)],
)  # fmt: skip
def test_a_verifier_returns_a_bool_or_a_score(value: object, score: float) -> None:
    assert as_score(value) == score


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.5, "1.5 (float)"), (-0.1, "-0.1 (float)"), (float("nan"), "nan (float)"), (2, "2 (int)"),
     ("yes", "'yes' (str)"), (None, "None (NoneType)"), ([True], "[True] (list)")],
)  # fmt: skip
def test_anything_else_returned_is_an_error_quoting_it(value: object, shown: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(f"returned {shown}; a verifier returns a bool")):
        as_score(value)


def test_the_grader_judges_with_plugins_builtins_and_the_pattern(plugin_file: Path) -> None:
    config = RewardConfig(
        task_verifiers={"arith": "numeric"},
        verifiers={"mine": f"{plugin_file}:contains", "graded": f"{plugin_file}:overlap"},
        correct_threshold=0.6,
        answer_pattern=r"ANSWER: (\S+)",
    )
    grader = Grader.from_config(config)
    calls = load_verifier(f"{plugin_file}:contains").__globals__["CALLS"]
    calls.clear()
    response = "It is blue and so is the sky"
    mine = record("blue")
    judged = grader.judge(response, mine)
    assert (judged.verdict, judged.verifier, judged.extraction.answer) == ("correct", f"{plugin_file}:contains", None)
    assert calls == [(response, mine)], "the whole response and the record itself"
    assert grader.judge("red.", record("blue")).verdict == "wrong"
    graded = record("red green blue", task="graded")
    assert grader.judge("red green", graded).verdict == "correct"  # 2/3 >= 0.6
    assert grader.judge("red", graded).verdict == "wrong"  # 1/3
    arith = record("19", task="arith")
    assert grader.judge("12 + 7 = 19. ANSWER: 19", arith).verifier == "numeric"
    assert grader.judge("12 + 7 = 19. ANSWER: 19", arith).correct
    assert grader.judge("12 + 7 = 19. \\boxed{19}", arith).correct
    assert grader.judge("I give up", arith).verdict == "unparsable"
    assert grader.judge("It is blue", record(None)).verdict == "no_ground_truth"
    assert len(calls) == 2, "no plug-in call without a ground truth"


def test_a_failing_plugin_names_the_task_the_callable_and_the_problem(plugin_file: Path) -> None:
    grader = Grader(plugins={"mine": f"{plugin_file}:explode", "graded": f"{plugin_file}:maybe"})
    with pytest.raises(VerifierFailed) as raised:
        grader.judge("anything", record())
    message = str(raised.value)
    assert message.startswith(f"verifier '{plugin_file}:explode' of task 'mine' raised ZeroDivisionError: boom boom")
    assert message.endswith("…") and len(message) < 400, "the exception's text is shortened"
    with pytest.raises(VerifierFailed, match=r"of task 'graded' returned 'maybe' \(str\); a verifier returns a bool"):
        grader.judge("anything", record(task="graded"))


def test_evaluation_uses_the_grader_of_the_reward_config(tmp_path: Path, plugin_file: Path) -> None:
    """A real tiny model answers; the plug-in judges by the records' meta (which evaluation passes on)."""
    generator = TransformersGenerator(build_text_model(tmp_path / "model", CORPUS, SMALL, seed=0))
    records = [
        PromptRecord(id=f"q{i}", question=f"What is {i} + 2?", answer=str(i + 2), task="mine", meta={"expect": i == 1})
        for i in range(3)
    ]
    sampling = Sampling(max_new_tokens=6)
    responses = [samples[0] for samples in generator.generate(records, sampling)]
    grader = Grader.from_config(RewardConfig(verifiers={"mine": f"{plugin_file}:by_meta"}))
    calls = load_verifier(f"{plugin_file}:by_meta").__globals__["CALLS"]
    calls.clear()
    judged = evaluate(generator, records, sampling, grader)
    assert (judged.accuracy, judged.unparsable, judged.per_prompt) == (pytest.approx(1 / 3), 0.0, (0.0, 1.0, 0.0))
    assert calls == list(zip(responses, records, strict=True)), "whole responses, with the records' meta"
    assert is_correct(responses[1], records[1], grader) and not is_correct(responses[0], records[0], grader)
    default = evaluate(generator, records, sampling)  # no config: "auto" on the extracted final answer
    assert (default.accuracy, default.unparsable) == (0.0, 1.0)
