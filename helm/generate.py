"""Writes the chart's values.yaml and values.schema.json from `mpo.chart.ChartValues` (one source of truth).

python helm/generate.py           # write them
python helm/generate.py --check   # exit 1 when the committed files differ (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mpo.chart import CHART_OWNED, ChartValues
from mpo.config_example import commented_yaml

CHART = Path(__file__).resolve().parent / "onlinempo"

#: What the example values set beyond the defaults: a GPU run (one GPU per rollout replica and per
#: trainer rank, as many as the worker groups have) over prompts and a model on the volume.
_EXAMPLE: dict[str, Any] = {
    "model": {"path": "models/base"},
    "run": {
        "run_id": "online-mpo",
        "data": {"train": "/data/prompts/train.jsonl", "heldout": "/data/prompts/heldout.jsonl"},
        "rollout": {"model": "unused", "num_gpus_per_replica": 1, "dtype": "bfloat16"},
        "trainer": {"model": "unused", "world_size": 2, "num_gpus_per_rank": 1},
    },
}
#: Model classes of the run sections, by path in the values, for leaving out what the chart owns.
_SECTIONS = {
    ("run",): "ChartRunConfig",
    ("run", "rollout"): "RolloutConfig",
    ("run", "reward"): "RewardConfig",
    ("run", "trainer"): "TrainerConfig",
    ("run", "controller"): "ControllerConfig",
    **{("run", service, "server"): "ServerConfig" for service in ("rollout", "reward", "trainer", "controller")},
}


def values_yaml() -> str:
    values = ChartValues.model_validate(_EXAMPLE)
    skip = {(*path, name) for path, model in _SECTIONS.items() for name in CHART_OWNED[model]}
    header = [
        "# Values of the onlinempo chart. Written from mpo/chart.py by helm/generate.py: edit the models, not",
        "# this file. values.schema.json (from the same models) rejects unknown keys and bad values at lint",
        "# and install time. `run` is the run config (`mpo config example`) minus what the chart sets itself",
        "# (model, store_dir, state directories, the servers' hosts, ports, token and TLS) and what the run config",
        "# fills in from other fields. The servers' request limits are yours: they must agree across services.",
    ]
    return "\n".join(header + commented_yaml(values, skip=skip)) + "\n"


def values_schema() -> dict[str, Any]:
    schema = ChartValues.model_json_schema()
    for model, owned in CHART_OWNED.items():
        definition = schema["$defs"][model]
        for name in owned:
            definition["properties"].pop(name)
        definition["required"] = [name for name in definition.get("required", []) if name not in owned]
        if not definition["required"]:
            definition.pop("required")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "onlinempo chart values"
    return schema


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail when the committed files are stale")
    args = parser.parse_args()
    files = {
        CHART / "values.yaml": values_yaml(),
        CHART / "values.schema.json": json.dumps(values_schema(), indent=2, sort_keys=True) + "\n",
    }
    stale = [path for path, text in files.items() if not path.is_file() or path.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(CHART.parent.parent)} is stale: run python helm/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for path, text in files.items():
        path.write_text(text)
        print(f"wrote {path.relative_to(CHART.parent.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
