"""Online rounds in sync mode over the real services: vLLM rollout, reward workers, 2 DeepSpeed trainer ranks.

The policy is a tiny Qwen2 bootstrapped for a few seconds on one-step sums, so its samples at
temperature 1 are right on some prompts and wrong on others: correctness pairs exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import ray

from mpo.config import AuthConfig, RoundsConfig
from mpo.data.tasks.arith import derivation_holds, question_expression
from mpo.grading.answers import extract_final_answer
from mpo.grading.verify import answers_match
from mpo.services.controller.loop import RoundLoop, to_prompt
from mpo.services.controller.retry import ServiceClients
from mpo.services.controller.run_control import RunControl
from mpo.services.controller.store import RunStore
from mpo.services.rollout.server import RunningRollout
from mpo.v1 import common_pb2, controller_pb2
from tests.controller_helpers import start_round_services, sums

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(
    sums_policy: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[ServiceClients, RunningRollout]]:
    root = tmp_path_factory.mktemp("round-loop")
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-round-loop-tests", log_to_driver=False)
    running = await start_round_services(sums_policy, root, global_batch_pairs=16, step_checks=True)
    addresses = {name: getattr(running, name).address for name in ("rollout", "reward", "trainer")}
    clients = ServiceClients.connect(addresses, AuthConfig())  # the controller's: the round's RetryPolicy only
    yield clients, running.rollout
    await clients.close()
    await running.stop()
    ray.shutdown()


@pytest.fixture
def clients(services: tuple[ServiceClients, RunningRollout]) -> ServiceClients:
    return services[0]


async def test_offline_rounds_train_but_keep_sampling_the_base_weights(clients: ServiceClients, tmp_path: Path) -> None:
    """`sample_from: base` (offline MPO): rounds before the last train and publish nothing, so every round
    samples the weights that served when the run started. Runs first, on the bootstrapped policy (right on
    some samples, wrong on others, so rounds have pairs), and stops after round 2 of 3: the rollout keeps
    the base weights for the next test (the last round's publish is tested at the end of the module)."""
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="offline", state=controller_pb2.RUN_STATE_RUNNING))
    config = RoundsConfig(
        rounds=3, prompts_per_round=8, samples_per_prompt=4, max_tokens=24, eval_every=0, sample_from="base"
    )
    serving = (await clients.rollout.status()).policy_version
    step = (await clients.trainer.status()).step
    control = RunControl()
    loop = RoundLoop("offline", config, store, clients, sums(40, 200), [], control=control)
    loop.on_round = lambda record: control.stop() if record.round == 2 else None
    records = await loop.run()

    assert [r.round for r in records] == [1, 2]
    assert [r.rollout_policy_version for r in records] == [serving] * 2, "every round sampled the base"
    assert [r.trained_policy_version for r in records] == [serving] * 2
    trained = [r.train_steps for r in records]
    assert sum(trained) > 0 and (await clients.trainer.status()).step == step + sum(trained)
    assert (await clients.rollout.status()).policy_version == serving, "nothing was published"


async def test_two_sync_rounds_then_a_resumed_third(clients: ServiceClients, tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="demo", state=controller_pb2.RUN_STATE_RUNNING))
    config = RoundsConfig(rounds=2, prompts_per_round=8, samples_per_prompt=4, max_tokens=24, eval_prompts=12)
    train, heldout = sums(40, 100), sums(12, 900)
    step = (await clients.trainer.status()).step  # an earlier test of this module may have trained
    records = await RoundLoop("demo", config, store, clients, train, heldout).run()

    assert [r.round for r in records] == [1, 2]
    pairs = [r.labels.pairs_correctness + r.labels.pairs_dropout_ntp for r in records]
    assert sum(pairs) > 0, "the bootstrapped policy must be right on some samples and wrong on others"
    assert store.pair_count("demo") == sum(pairs)
    assert [len(store.committed_pairs("demo", r.round)) for r in records] == pairs
    assert store.unfinished_rounds("demo") == []
    versions = [r.trained_policy_version for r in records]
    assert versions == sorted(versions) and versions[-1] == sum(1 for n in pairs if n)
    assert all((r.train_steps > 0) == (n > 0) for r, n in zip(records, pairs, strict=True))
    assert (await clients.trainer.status()).step == step + sum(r.train_steps for r in records)
    assert (await clients.rollout.status()).policy_version == versions[-1]
    for record in records:
        assert 0.0 <= record.eval_accuracy["arith"] <= 1.0
        assert record.timings.total >= record.timings.generate + record.timings.train > 0
        assert record.labels.samples == 8 * 4
    run = store.get_run("demo")
    assert run is not None and run.current_round == 2 and run.policy_version == versions[-1]
    # The reward service checks arith steps: every chosen answer is a valid derivation ...
    for pair in (p for r in records for p in store.committed_pairs("demo", r.round)):
        rationale = extract_final_answer(pair.chosen).rationale
        assert derivation_holds(question_expression(pair.prompt.question), rationale), pair.chosen
    # ... while evaluation stays final-answer accuracy, recomputed here from the same greedy samples.
    greedy = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=config.max_tokens)
    samples = (await clients.rollout.generate([to_prompt(r) for r in heldout], greedy)).samples
    answers = [extract_final_answer(s.text).answer for s in samples]
    right = sum(a is not None and answers_match(a, r.answer or "", None) for a, r in zip(answers, heldout, strict=True))
    assert records[-1].eval_accuracy["arith"] == right / len(heldout)

    # The controller stops right after committing round 3 (simulated in-process: `_finish` raises; the
    # kill -9 tests of the controller belong with its service). The next run finishes that round from
    # the committed pairs instead of sampling it again, and stops at round 3.
    third = config.model_copy(update={"rounds": 3})
    interrupted = RoundLoop("demo", third, store, clients, train, heldout)

    async def stop_after_commit(*args: object) -> None:
        raise RuntimeError("controller stopped")

    interrupted._finish = stop_after_commit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="controller stopped"):
        await interrupted.run()
    assert [r.round for r in store.unfinished_rounds("demo")] == [3]
    committed = store.pair_count("demo")
    resumed = await RoundLoop("demo", third, store, clients, train, heldout).run()
    assert [r.round for r in resumed] == [3] and store.pair_count("demo") == committed
    assert resumed[0].labels.samples == 8 * 4, "the record keeps the labelling figures from before the stop"
    assert [r.round for r in store.round_records("demo")] == [1, 2, 3] and not store.unfinished_rounds("demo")


async def test_the_last_offline_round_publishes_and_is_evaluated(clients: ServiceClients, tmp_path: Path) -> None:
    """The last round of an offline run publishes the trainer's weights, pairs or not (earlier rounds may
    have trained), and the held-out evaluation scores them."""
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="offline-last", state=controller_pb2.RUN_STATE_RUNNING))
    config = RoundsConfig(
        rounds=1, prompts_per_round=4, samples_per_prompt=2, max_tokens=16, eval_every=1, eval_prompts=8,
        sample_from="base",
    )  # fmt: skip
    serving = (await clients.rollout.status()).policy_version
    records = await RoundLoop("offline-last", config, store, clients, sums(8, 300), sums(8, 900)).run()
    assert [(r.rollout_policy_version, r.trained_policy_version) for r in records] == [(serving, serving + 1)]
    assert (await clients.rollout.status()).policy_version == serving + 1
    assert records[0].eval_accuracy and store.get_run("offline-last").policy_version == serving + 1


async def test_a_rollout_replica_killed_mid_round_is_retried_and_the_run_completes(
    services: tuple[ServiceClients, RunningRollout], tmp_path: Path
) -> None:
    """Runs last in this module: it kills the rollout engine actor (Ray restarts it)."""
    clients, rollout = services
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="killed", state=controller_pb2.RUN_STATE_RUNNING))
    # Long generations, so the kill lands while round 1's Generate is in flight.
    config = RoundsConfig(rounds=1, prompts_per_round=8, samples_per_prompt=32, max_tokens=64, eval_every=0)
    phases: list[str] = []
    loop = RoundLoop("killed", config, store, clients, sums(8, 300), [], on_phase=lambda _, p: phases.append(p))
    running = asyncio.create_task(loop.run())
    while not phases or rollout.pool.queue_depth == 0:
        await asyncio.sleep(0.05)
    assert phases == ["generate"]
    ray.kill(rollout.pool.actors[0], no_restart=False)
    records = await running
    assert [r.round for r in records] == [1] and records[0].labels.samples == 8 * 32, "the round was sampled again"
    assert store.pair_count("killed") == records[0].labels.pairs_correctness
    assert not store.unfinished_rounds("killed")
