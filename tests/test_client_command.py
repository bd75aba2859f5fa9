"""`mpo client generate`: the request built from its flags, and replies printed as JSON for people."""

from __future__ import annotations

import json
from pathlib import Path

from mpo.client_command import json_text, request
from mpo.v1 import common_pb2, rollout_pb2


def test_the_request_carries_the_image_bytes_and_only_a_given_seed(tmp_path: Path) -> None:
    image = tmp_path / "shape.png"
    image.write_bytes(b"\x89PNG fake")
    options = {"task": "shapes", "n": 2, "temperature": 1.0, "top_p": 0.9, "top_k": 5, "max_tokens": 16,
               "stop": ["\n"], "logprobs": True}  # fmt: skip
    prompt, sampling = request("Which shape?", images=[image], seed=None, **options)
    assert (prompt.id, prompt.question, prompt.task) == ("cli", "Which shape?", "shapes")
    assert [i.data for i in prompt.images] == [b"\x89PNG fake"]
    assert (sampling.n, sampling.top_k, list(sampling.stop), sampling.return_logprobs) == (2, 5, ["\n"], True)
    assert not sampling.HasField("seed")  # unset: the engine draws one
    _, seeded = request("Which shape?", images=[], seed=0, **options)
    assert seeded.HasField("seed") and seeded.seed == 0


def test_replies_print_proto_field_names_and_zeros() -> None:
    reply = rollout_pb2.GenerateResponse(samples=[common_pb2.Sample(prompt_id="cli", index=0, text="5")])
    sample = json.loads(json_text(reply))["samples"][0]
    assert sample["prompt_id"] == "cli" and sample["index"] == 0 and sample["policy_version"] == "0"
    assert json_text(reply, indent=2).startswith('{\n  "samples": [')
