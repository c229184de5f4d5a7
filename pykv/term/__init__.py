"""Erlang terms in Python: the types (`types`) and the External Term Format codec (`codec`)."""

from .codec import FAST_DEPTH, MAX_DECOMPRESSED, TermError, decode, decode_all, encode, encode_into, freeze
from .types import (
    Atom, BitBinary, ExportFun, FrozenDict, FrozenList, Fun, ImproperList, Map, Pid, Port,
    Record, Reference, exactly_equal, inspect,
)

__all__ = [
    "encode", "encode_into", "decode", "decode_all", "freeze", "TermError", "FAST_DEPTH",
    "MAX_DECOMPRESSED",
    "Atom", "Pid", "Reference", "Port", "ImproperList", "BitBinary", "ExportFun", "Fun",
    "FrozenList", "FrozenDict", "Map", "Record", "exactly_equal", "inspect",
]
