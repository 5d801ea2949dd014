"""Schema-constrained decoding: schema -> JSON Schema -> grammar index -> logits processor -> generate."""

from vlx.decode.generate import generate

__all__ = ["generate"]
