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
from fedlm.compression.stages import (
    DecodeStage,
    EncodeStage,
    decode_broadcast,
    derive_generator,
    encode_broadcast,
    encode_with_feedback,
)
from fedlm.compression.wire import pack, tensor_bytes, unpack

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
    "derive_generator",
    "encode_broadcast",
    "encode_with_feedback",
    "pack",
    "tensor_bytes",
    "unpack",
]
