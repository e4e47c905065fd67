"""Update compression: codecs with exact byte counts, encode/decode stages, error feedback."""

from fedlm.compression.codecs import (
    CODECS,
    DEFAULT_MAX_NUMEL,
    Codec,
    FloatCodec,
    StochasticQuantCodec,
    TopKCodec,
    decode,
)
from fedlm.compression.payload import decode_payload, header_limit
from fedlm.compression.stages import (
    DecodeStage,
    EncodeStage,
    decode_broadcast,
    derive_generator,
    encode_broadcast,
    encode_with_feedback,
)
from fedlm.compression.wire import pack, read_header, read_tensors, tensor_bytes, unpack

__all__ = [
    "CODECS",
    "DEFAULT_MAX_NUMEL",
    "Codec",
    "DecodeStage",
    "EncodeStage",
    "FloatCodec",
    "StochasticQuantCodec",
    "TopKCodec",
    "decode",
    "decode_broadcast",
    "decode_payload",
    "derive_generator",
    "encode_broadcast",
    "encode_with_feedback",
    "header_limit",
    "pack",
    "read_header",
    "read_tensors",
    "tensor_bytes",
    "unpack",
]
