"""The controller's durable state: runs, round records and the pair ledger in SQLite, pairs in Parquet.

What is committed survives a `kill -9`:
- SQLite in WAL mode with `synchronous=FULL`: a transaction that returned is on disk;
- a round's pairs are written to a Parquet shard (temporary file, fsync, rename), beside the database or
  under `pairs_dir`, and only then committed, with one ledger row per pair, in one transaction. A shard
  without its transaction is an interrupted commit: it is simply written again, because the database —
  not the file — says which rounds are committed. Committing a round twice changes nothing (exactly once).

The database records where each shard was written (relative to the store when beside it, else absolute),
and every read goes there: a store reopened without `pairs_dir` (`mpo dashboard --store-dir`) still finds
its shards. The database wants a local filesystem (SQLite's WAL locks are not safe on NFS); the shards are
plain files that may sit on shared storage.

The shards use the column names TRL's DPO trainer reads (`prompt`, `chosen`, `rejected`, `images`), in
its conversational format (string content in a text-only shard, content parts with an `image` part per
image in a shard with images), with the images as a `datasets` Image sequence, so
`datasets.load_dataset("parquet", data_files=...)` gives a DPO-ready data set with decoded images.
Each row also keeps the whole pair (minus the image bytes, which live in `images`) so the controller
can resend exactly what it committed after a crash.

A prompt's images are on disk once per round however many pairs answer it: each row still lists its
images (TRL reads them per row), but the shard is one row group with the image bytes dictionary-encoded,
so equal images share one dictionary entry (`datasets`' own writer stores every row's bytes plainly).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Features, Image, Value
from datasets import Sequence as DatasetSequence

from mpo.config import PromptConfig
from mpo.data.prompting import user_text
from mpo.durable import atomic_write
from mpo.pairs import prompt_of, prompts_by_id, referring
from mpo.v1 import common_pb2, controller_pb2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    record BLOB NOT NULL                       -- controller_pb2.Run
);
CREATE TABLE IF NOT EXISTS rounds (
    run_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    pairs INTEGER NOT NULL,
    shard TEXT NOT NULL,                       -- relative to the store's root, or absolute (pairs_dir)
    committed_at REAL NOT NULL,
    trained_step INTEGER,                      -- trainer step after training this round; NULL until trained
    record BLOB NOT NULL,                      -- common_pb2.RoundMetrics: partial at commit, whole when finished
    finished INTEGER NOT NULL DEFAULT 0,       -- 1 once the whole record is stored
    PRIMARY KEY (run_id, round)
);
CREATE TABLE IF NOT EXISTS pairs (
    run_id TEXT NOT NULL,
    pair_id TEXT NOT NULL,
    round INTEGER NOT NULL,
    policy_version INTEGER NOT NULL,           -- of the samples the pair was built from
    trained_version INTEGER,                   -- of the weights that trained on it; NULL until trained
    PRIMARY KEY (run_id, pair_id)
);
"""


def _features(turn_content: object) -> Features:
    return Features(
        {
            "id": Value("string"),
            "round": Value("int64"),
            "task": Value("string"),
            "source": Value("string"),
            "policy_version": Value("int64"),
            "prompt": [{"role": Value("string"), "content": turn_content}],
            "chosen": [{"role": Value("string"), "content": turn_content}],
            "rejected": [{"role": Value("string"), "content": turn_content}],
            "images": DatasetSequence(Image()),
            "pair": Value("binary"),
        }
    )


#: TRL's conventions: text data sets carry string content; vision data sets content parts.
_TEXT_FEATURES = _features(Value("string"))
_VISION_FEATURES = _features([{"type": Value("string"), "text": Value("string")}])


class StoreError(ValueError):
    """A store operation that contradicts what is committed (unknown run, a different round twice)."""


@dataclass(frozen=True)
class CommittedRound:
    run_id: str
    round: int
    pairs: int
    shard: Path
    newly_committed: bool


def _turn(role: str, text: str, images: int, vision: bool) -> dict[str, object]:
    if not vision:
        return {"role": role, "content": text}
    content = [{"type": "image", "text": None} for _ in range(images)] + [{"type": "text", "text": text}]
    return {"role": role, "content": content}


def _row(
    pair: common_pb2.PreferencePair,
    question: common_pb2.Prompt,
    round_index: int,
    prompt: PromptConfig,
    vision: bool,
) -> dict[str, object]:
    """`question`: the prompt `pair` answers; the row's pair carries it inline, minus its images."""
    stripped = common_pb2.PreferencePair()
    stripped.CopyFrom(pair)
    stripped.ClearField("prompt_id")
    stripped.prompt.CopyFrom(question)
    del stripped.prompt.images[:]
    system = [_turn("system", prompt.system_prompt, 0, vision)] if prompt.system_prompt else []
    user = _turn("user", user_text(question.question, prompt.instruction), len(question.images), vision)
    return {
        "id": pair.id,
        "round": round_index,
        "task": question.task,
        "source": common_pb2.PairSource.Name(pair.source),
        "policy_version": pair.provenance.policy_version,
        "prompt": [*system, user],
        "chosen": [_turn("assistant", pair.chosen, 0, vision)],
        "rejected": [_turn("assistant", pair.rejected, 0, vision)],
        "images": [
            {"bytes": image.data, "path": None}
            if image.WhichOneof("source") == "data"
            else {"bytes": None, "path": image.uri.removeprefix("file://")}
            for image in question.images
        ],
        "pair": stripped.SerializeToString(),
    }


def _write_shard(table: pa.Table, path: Path) -> None:
    """One row group, every column dictionary-encoded with room for a round's distinct images: a prompt's
    image bytes are stored once, whichever rows list them. The table's schema keeps the `datasets`
    features, so readers still decode the images."""
    pq.write_table(
        table, path, row_group_size=max(1, table.num_rows), use_dictionary=True, dictionary_pagesize_limit=2**31 - 1
    )


class RunStore:
    """One store per controller; safe to use from several threads (one connection per call). New shards go
    under `pairs_dir` when given (`<pairs_dir>/<run_id>/`), else beside the database
    (`<root>/runs/<run_id>/pairs/`)."""

    def __init__(self, root: Path, *, pairs_dir: Path | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.database = self.root / "runs.sqlite3"
        self.pairs_dir = Path(pairs_dir).resolve() if pairs_dir is not None else None
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # --- runs ---------------------------------------------------------------------------------------------

    def put_run(self, run: controller_pb2.Run) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, record) VALUES (?, ?) "
                "ON CONFLICT (run_id) DO UPDATE SET record = excluded.record",
                (run.run_id, run.SerializeToString()),
            )

    def get_run(self, run_id: str) -> controller_pb2.Run | None:
        with self._connect() as db:
            row = db.execute("SELECT record FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return controller_pb2.Run.FromString(row[0]) if row else None

    def list_runs(self) -> list[controller_pb2.Run]:
        with self._connect() as db:
            rows = db.execute("SELECT record FROM runs ORDER BY run_id").fetchall()
        return [controller_pb2.Run.FromString(row[0]) for row in rows]

    # --- pairs --------------------------------------------------------------------------------------------

    def pairs_folder(self, run_id: str) -> Path:
        """Where this store writes the run's new shards."""
        if self.pairs_dir is not None:
            return self.pairs_dir / run_id
        return self.root / "runs" / run_id / "pairs"

    def shard_path(self, run_id: str, round_index: int) -> Path:
        """Where the committed shard of the round lies (wherever it was written)."""
        committed = self._committed(run_id, round_index)
        if committed is None:
            raise StoreError(f"round {round_index} of run {run_id!r} is not committed")
        return committed.shard

    def commit_pairs(
        self,
        run_id: str,
        round_index: int,
        pairs: Sequence[common_pb2.PreferencePair],
        partial: common_pb2.RoundMetrics | None = None,
        *,
        prompts: Sequence[common_pb2.Prompt] = (),
        prompt: PromptConfig | None = None,
    ) -> CommittedRound:
        """Commit a round's pairs exactly once, with what is known of its record so far (rollout and
        labelling), so a round interrupted later can still be finished; a repeat changes nothing.
        `prompts` are those the pairs name by `prompt_id` (`BuildPairsResponse.prompts`; pairs may also
        carry theirs). `prompt` is the run's prompt settings, so the shard's conversations are the ones
        rendered."""
        existing = self._committed(run_id, round_index)
        if existing is not None:
            return existing
        if self.get_run(run_id) is None:
            raise StoreError(f"unknown run {run_id!r}")
        shard = self.pairs_folder(run_id) / f"round-{round_index:06d}.parquet"
        named = prompts_by_id(prompts)
        questions = [prompt_of(pair, named) for pair in pairs]
        vision = any(question.images for question in questions)
        features = _VISION_FEATURES if vision else _TEXT_FEATURES
        settings = prompt or PromptConfig()
        rows = [_row(pair, q, round_index, settings, vision) for pair, q in zip(pairs, questions, strict=True)]
        table = Dataset.from_dict(
            {name: [row[name] for row in rows] for name in features}, features=features
        ).data.table
        atomic_write(shard, lambda temporary: _write_shard(table, temporary))
        with self._transaction() as db:
            if db.execute(
                "SELECT 1 FROM rounds WHERE run_id = ? AND round = ?", (run_id, round_index)
            ).fetchone():  # committed concurrently: keep the first
                return CommittedRound(run_id, round_index, len(pairs), shard, newly_committed=False)
            partial = partial or common_pb2.RoundMetrics(run_id=run_id, round=round_index)
            db.execute(
                "INSERT INTO rounds (run_id, round, pairs, shard, committed_at, record) VALUES (?, ?, ?, ?, ?, ?)",
                (run_id, round_index, len(pairs), str(self._recorded(shard)), time.time(),
                 partial.SerializeToString()),
            )  # fmt: skip
            try:
                db.executemany(
                    "INSERT INTO pairs (run_id, pair_id, round, policy_version) VALUES (?, ?, ?, ?)",
                    [(run_id, p.id, round_index, p.provenance.policy_version) for p in pairs],
                )
            except sqlite3.IntegrityError as error:
                raise StoreError(
                    f"round {round_index} repeats a pair id committed earlier in run {run_id!r}"
                ) from error
        return CommittedRound(run_id, round_index, len(pairs), shard, newly_committed=True)

    def _recorded(self, shard: Path) -> Path:
        """The shard's path as the database keeps it: relative beside the database (the store can move), else
        absolute (reads go where it was written, whatever `pairs_dir` a later process is given: `root / path`
        of an absolute path is that path)."""
        return shard.relative_to(self.root) if shard.is_relative_to(self.root) else shard

    def _committed(self, run_id: str, round_index: int) -> CommittedRound | None:
        with self._connect() as db:
            return self._committed_in(db, run_id, round_index)

    def _committed_in(self, db: sqlite3.Connection, run_id: str, round_index: int) -> CommittedRound | None:
        row = db.execute(
            "SELECT pairs, shard FROM rounds WHERE run_id = ? AND round = ?", (run_id, round_index)
        ).fetchone()
        if row is None:
            return None
        return CommittedRound(run_id, round_index, row[0], self.root / row[1], newly_committed=False)

    def committed_pairs(self, run_id: str, round_index: int) -> list[common_pb2.PreferencePair]:
        """The pairs as committed, each with its prompt inline (images restored)."""
        committed = self._committed(run_id, round_index)
        if committed is None:
            raise StoreError(f"round {round_index} of run {run_id!r} is not committed")
        pairs = []
        for row in pq.read_table(committed.shard, columns=["pair", "images"]).to_pylist():
            pair = common_pb2.PreferencePair.FromString(row["pair"])
            for image in row["images"]:
                if image["bytes"] is not None:
                    pair.prompt.images.add(data=image["bytes"])
                else:
                    pair.prompt.images.add(uri=image["path"])
            pairs.append(pair)
        return pairs

    def committed_round(
        self, run_id: str, round_index: int
    ) -> tuple[list[common_pb2.Prompt], list[common_pb2.PreferencePair]]:
        """The round's prompts, each once, and its pairs naming them by id: what Train takes, e.g. to
        train the round after a crash."""
        return referring(self.committed_pairs(run_id, round_index))

    def mark_trained(
        self,
        run_id: str,
        round_index: int,
        step: int,
        *,
        trained_version: int,
        partial: common_pb2.RoundMetrics | None = None,
    ) -> None:
        """Record that the round's pairs were trained by the weights of `trained_version`, with the record
        so far (its training figures survive a crash before the round is finished). The first call
        stands: finishing a round again after a crash neither re-dates its pairs nor loses its figures."""
        with self._transaction() as db:
            if self._committed_in(db, run_id, round_index) is None:
                raise StoreError(f"round {round_index} of run {run_id!r} is not committed")
            first = db.execute(
                "UPDATE rounds SET trained_step = ? WHERE run_id = ? AND round = ? AND trained_step IS NULL",
                (step, run_id, round_index),
            ).rowcount
            if first and partial is not None:
                db.execute(
                    "UPDATE rounds SET record = ? WHERE run_id = ? AND round = ?",
                    (partial.SerializeToString(), run_id, round_index),
                )
            db.execute(
                "UPDATE pairs SET trained_version = ? WHERE run_id = ? AND round = ? AND trained_version IS NULL",
                (trained_version, run_id, round_index),
            )

    def pair_staleness(self, run_id: str, round_index: int | None = None) -> dict[str, int]:
        """Per trained pair (of one round, or all): versions between the samples it was built from and
        the weights that trained on it."""
        query = (
            "SELECT pair_id, MAX(0, trained_version - policy_version) FROM pairs "
            "WHERE run_id = ? AND trained_version IS NOT NULL"
        )
        arguments: tuple[object, ...] = (run_id,)
        if round_index is not None:
            query += " AND round = ?"
            arguments += (round_index,)
        with self._connect() as db:
            rows = db.execute(query, arguments).fetchall()
        return {pair_id: int(staleness) for pair_id, staleness in rows}

    def unfinished_rounds(self, run_id: str) -> list[common_pb2.RoundMetrics]:
        """Committed rounds whose record was never finished (the controller stopped in between), with
        their partial records, in round order."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT record FROM rounds WHERE run_id = ? AND finished = 0 ORDER BY round", (run_id,)
            ).fetchall()
        return [common_pb2.RoundMetrics.FromString(row[0]) for row in rows]

    def last_committed_round(self, run_id: str) -> int:
        with self._connect() as db:
            row = db.execute("SELECT MAX(round) FROM rounds WHERE run_id = ?", (run_id,)).fetchone()
        return int(row[0] or 0)

    def committed_rounds(self, run_id: str) -> list[int]:
        with self._connect() as db:
            rows = db.execute("SELECT round FROM rounds WHERE run_id = ? ORDER BY round", (run_id,)).fetchall()
        return [int(row[0]) for row in rows]

    def pair_round(self, run_id: str, pair_id: str) -> int | None:
        """The round that committed `pair_id` (None: no such pair in the run)."""
        with self._connect() as db:
            row = db.execute("SELECT round FROM pairs WHERE run_id = ? AND pair_id = ?", (run_id, pair_id)).fetchone()
        return int(row[0]) if row else None

    def pair_count(self, run_id: str) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM pairs WHERE run_id = ?", (run_id,)).fetchone()[0])

    # --- round records ------------------------------------------------------------------------------------

    def store_round(self, metrics: common_pb2.RoundMetrics) -> None:
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE rounds SET record = ?, finished = 1 WHERE run_id = ? AND round = ?",
                (metrics.SerializeToString(), metrics.run_id, metrics.round),
            ).rowcount
        if not updated:
            raise StoreError(f"round {metrics.round} of run {metrics.run_id!r} is not committed")

    def round_records(self, run_id: str, *, from_round: int = 0) -> list[common_pb2.RoundMetrics]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT record FROM rounds WHERE run_id = ? AND round >= ? AND finished = 1 ORDER BY round",
                (run_id, from_round),
            ).fetchall()
        return [common_pb2.RoundMetrics.FromString(row[0]) for row in rows]
