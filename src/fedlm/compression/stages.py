"""Encode and decode stages, error feedback, and the broadcast (downlink) helpers.

Client side, ``EncodeStage`` turns ``ClientUpdate.tensors`` into ``payload`` bytes;
server side, ``DecodeStage`` turns every payload back into tensors and moves malformed
ones to ``CohortValue.rejected``. The same codecs compress the server's broadcast with
:func:`encode_broadcast` / :func:`decode_broadcast`.

Error feedback (Stich et al., 2018, "Sparsified SGD with Memory"; Lin et al., 2018,
"Deep Gradient Compression"): what a lossy codec did not send this round, the residual
``r = (x + r_prev) - decode(encode(x + r_prev))``, is added to the next round's update,
so over rounds nothing is lost: ``sum(sent) + r_final == sum(inputs)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from fedlm.compression.base import Codec
from fedlm.compression.payload import DEFAULT_MAX_NUMEL
from fedlm.errors import ConfigError, PipelineError, ProtocolError, UpdateRejected
from fedlm.stages import ClientUpdate, CohortValue, RoundPlan, TensorDict


def derive_generator(seed: int, *labels: str) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and labels (e.g. a client id), stable across runs.

    Uses BLAKE2b rather than ``hash()``, which Python salts per process.
    """
    digest = hashlib.blake2b(repr((int(seed), *labels)).encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


def encode_with_feedback(
    codec: Codec,
    tensors: TensorDict,
    residual: TensorDict,
    *,
    generator: torch.Generator | None,
) -> tuple[bytes, TensorDict]:
    """Encode ``tensors + residual`` and return (payload, new residual).

    The new residual is exactly what the receiver will not see: the corrected update
    minus the decoded payload. Residual entries for names absent from ``tensors`` are
    kept for a later round.

    Args:
        codec: any codec (error feedback matters for biased ones such as top-k).
        tensors: this round's update, name -> float tensor.
        residual: the previous residual (empty dict in round one), float32 on CPU.
        generator: for stochastic codecs.

    Raises:
        PipelineError: a residual's shape differs from its tensor's.
    """
    corrected: TensorDict = {}
    for name, t in tensors.items():
        x = t.detach().to("cpu", torch.float32)
        r = residual.get(name)
        if r is not None and r.shape != x.shape:
            raise PipelineError(
                f"error-feedback residual for {name!r} has shape {list(r.shape)} but the "
                f"update has {list(x.shape)}; reset the client's encode state when the model "
                "changes"
            )
        corrected[name] = x if r is None else x + r
    payload = codec.encode(corrected, generator=generator)
    sent = codec.decode(payload)
    new_residual = {k: v for k, v in residual.items() if k not in corrected}
    for name, x in corrected.items():
        new_residual[name] = x - sent[name].to(torch.float32)
    return payload, new_residual


class EncodeStage:
    """Client stage: serialise the update's tensors with a codec.

    State is the error-feedback residual (name -> float32 tensor; empty when error
    feedback is off or in round one). It belongs to one client: the simulator keeps one
    state per client id and passes that client's state back each round it is sampled.

    Metrics: ``bytes`` (len of the payload), ``raw_bytes`` (the same tensors as float32),
    ``ratio`` (raw_bytes / bytes), and ``residual_norm`` (L2) with error feedback.

    Args:
        codec: the upload codec.
        error_feedback: keep and re-send what the codec dropped.
    """

    name: ClassVar[str] = "encode"
    kind: ClassVar[str] = "encode"

    def __init__(self, codec: Codec, *, error_feedback: bool = False) -> None:
        self.codec = codec
        self.error_feedback = error_feedback

    def init(self) -> TensorDict:
        return {}

    def apply(
        self, state: TensorDict, value: ClientUpdate, plan: RoundPlan
    ) -> tuple[TensorDict, ClientUpdate, dict[str, Any]]:
        if value.tensors is None:
            raise PipelineError(
                f"encode stage got client {value.client_id!r}'s update without tensors; "
                "put encode once, after clip/noise and before mask"
            )
        generator = derive_generator(plan.seed, "encode", value.client_id)
        metrics: dict[str, Any] = {}
        if self.error_feedback:
            payload, state = encode_with_feedback(
                self.codec, value.tensors, state, generator=generator
            )
            metrics["residual_norm"] = (
                sum(float(r.double().square().sum()) for r in state.values()) ** 0.5
            )
        else:
            payload = self.codec.encode(value.tensors, generator=generator)
        raw = sum(t.numel() for t in value.tensors.values()) * 4  # float32 bytes
        metrics.update(bytes=len(payload), raw_bytes=raw, ratio=raw / len(payload))
        return state, dataclasses.replace(value, tensors=None, payload=payload), metrics


class DecodeStage:
    """Server stage: decode each update's payload; malformed ones become rejections.

    Every byte from a client is hostile, so before decoding anything the stage rejects a
    payload longer than ``max_bytes`` ("too_large"), and the decoder checks every declared
    name, shape and size against ``shapes`` before allocating (see
    :mod:`fedlm.compression.payload`): one payload costs at most a small multiple of the
    model's trainable size. Only payloads made by the configured codec (same name and
    parameters) are accepted. A rejected update leaves ``updates`` and is appended to
    ``rejected`` as ``{"client_id", "reason", "detail"}``; the round goes on without it.

    Metrics: ``bytes`` (sum of payload lengths received), ``decoded``, ``rejected``.

    Args:
        codec: the upload codec.
        shapes: the model's trainable tensors the server expects, name -> shape. None
            keeps the old, unbounded behaviour (only ``max_numel`` caps memory); a server
            should always pass them.
        max_bytes: reject longer payloads before decoding them (``federation.max_update_bytes``).
        max_numel: without ``shapes``, cap on the elements one payload may declare.
    """

    name: ClassVar[str] = "decode"
    kind: ClassVar[str] = "decode"

    def __init__(
        self,
        codec: Codec,
        *,
        shapes: Mapping[str, Sequence[int]] | None = None,
        max_bytes: int | None = None,
        max_numel: int = DEFAULT_MAX_NUMEL,
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
            raise ConfigError(f"DecodeStage max_bytes={max_bytes!r} must be a positive integer or None")
        self.codec = codec
        self.shapes = None if shapes is None else {str(k): tuple(int(d) for d in v) for k, v in shapes.items()}
        self.max_bytes = max_bytes
        self.max_numel = max_numel

    def init(self) -> None:
        return None

    def decode(self, payload: object) -> TensorDict:
        """One payload's tensors; ``UpdateRejected`` (only) for anything unacceptable."""
        if payload is None:
            raise UpdateRejected("missing_payload", "update carries no payload; is encode configured?")
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise UpdateRejected("malformed", f"payload is a {type(payload).__name__}, not bytes")
        size = memoryview(payload).nbytes
        if self.max_bytes is not None and size > self.max_bytes:
            raise UpdateRejected(
                "too_large", f"payload of {size} bytes exceeds federation.max_update_bytes={self.max_bytes}"
            )
        return self.codec.decode(payload, shapes=self.shapes, max_bytes=self.max_bytes, max_numel=self.max_numel)

    def apply(
        self, state: None, value: CohortValue, plan: RoundPlan
    ) -> tuple[None, CohortValue, dict[str, Any]]:
        accepted: list[ClientUpdate] = []
        rejected = list(value.rejected)
        received = 0
        for update in value.updates:
            if isinstance(update.payload, (bytes, bytearray, memoryview)):
                received += memoryview(update.payload).nbytes
            try:
                tensors = self.decode(update.payload)
            except UpdateRejected as exc:
                rejected.append(
                    {"client_id": update.client_id, "reason": exc.reason, "detail": exc.detail}
                )
                continue
            accepted.append(dataclasses.replace(update, tensors=tensors, payload=None))
        metrics = {
            "bytes": received,
            "decoded": len(accepted),
            "rejected": len(value.updates) - len(accepted),
        }
        return state, dataclasses.replace(value, updates=accepted, rejected=rejected), metrics


def encode_broadcast(
    codec: Codec,
    tensors: TensorDict,
    *,
    seed: int,
    residual: TensorDict | None = None,
) -> tuple[bytes, TensorDict | None]:
    """Server side of the downlink: encode the broadcast (global weights or their delta).

    Args:
        codec: the download codec.
        tensors: what to broadcast.
        seed: the round seed (stochastic codecs derive their generator from it).
        residual: the server's error-feedback residual, or None for no error feedback.

    Returns:
        (payload, new residual or None).
    """
    generator = derive_generator(seed, "broadcast")
    if residual is None:
        return codec.encode(tensors, generator=generator), None
    return encode_with_feedback(codec, tensors, residual, generator=generator)


def decode_broadcast(
    codec: Codec,
    payload: bytes,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    max_numel: int = DEFAULT_MAX_NUMEL,
) -> TensorDict:
    """Client side of the downlink: decode the server's broadcast.

    Args:
        codec: the download codec.
        payload: the broadcast bytes.
        shapes: the client's model tensors, name -> shape, when it knows them (the
            decoded broadcast then has exactly these, as float32).
        max_numel: without ``shapes``, cap on the elements the broadcast may declare.

    Raises:
        ProtocolError: the broadcast is malformed or made with another codec.
    """
    try:
        return codec.decode(payload, shapes=shapes, max_numel=max_numel)
    except UpdateRejected as exc:
        raise ProtocolError(f"broadcast rejected ({exc.reason}): {exc.detail}") from None


__all__ = [
    "DecodeStage",
    "EncodeStage",
    "decode_broadcast",
    "derive_generator",
    "encode_broadcast",
    "encode_with_feedback",
]
