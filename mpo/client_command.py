"""`mpo client generate`: one prompt to a rollout service, as Generate (one JSON reply) or GenerateStream
(one JSON line per delta)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from mpo.serving.auth import read_token
from mpo.serving.clients import RolloutClient
from mpo.v1 import common_pb2

#: Proto → JSON for people: field names as in the .proto, zeros printed (index 0, policy_version 0).
_JSON = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}


async def generate(
    prompt: common_pb2.Prompt,
    sampling: common_pb2.SamplingParams,
    *,
    address: str,
    stream: bool,
    token_env: str,
    timeout: float,
    tls_root_cert: Path | None,
    say: Callable[[str], None],
) -> None:
    """Send `prompt` and `say` the reply as JSON (grpc.aio.AioRpcError when the service refuses it)."""
    client = RolloutClient(address, token=read_token(token_env), timeout=timeout, tls_root_cert=tls_root_cert)
    async with client:
        if stream:
            async for delta in client.generate_stream([prompt], sampling):
                say(json_text(delta))
        else:
            say(json_text(await client.generate([prompt], sampling), indent=2))


def request(
    question: str,
    *,
    task: str,
    images: Sequence[Path],
    n: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_tokens: int,
    stop: Sequence[str],
    logprobs: bool,
    seed: int | None,
) -> tuple[common_pb2.Prompt, common_pb2.SamplingParams]:
    """The prompt (images read from their files) and the sampling parameters of one Generate call."""
    prompt = common_pb2.Prompt(
        id="cli",
        question=question,
        task=task,
        images=[common_pb2.Image(data=Path(path).read_bytes()) for path in images],
    )
    sampling = common_pb2.SamplingParams(
        n=n,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_tokens=max_tokens,
        stop=stop,
        return_logprobs=logprobs,
        **({"seed": seed} if seed is not None else {}),
    )
    return prompt, sampling


def json_text(message: Message, *, indent: int | None = None) -> str:
    """A reply (or stream delta) as JSON text, as `mpo client generate` prints it."""
    return json.dumps(MessageToDict(message, **_JSON), indent=indent)
