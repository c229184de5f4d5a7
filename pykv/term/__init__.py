"""Erlang terms in Python: the types (`types`) and the External Term Format codec (`codec`)."""

from .codec import MAX_DECOMPRESSED, MAX_DEPTH, TermError, decode, decode_all, encode, encode_into, freeze
from .types import (
    Atom, BitBinary, ExportFun, FrozenDict, FrozenList, Fun, ImproperList, Pid, Port,
    Reference, inspect,
)

__all__ = [
    "encode", "encode_into", "decode", "decode_all", "freeze", "TermError", "MAX_DEPTH",
    "MAX_DECOMPRESSED",
    "Atom", "Pid", "Reference", "Port", "ImproperList", "BitBinary", "ExportFun", "Fun",
    "FrozenList", "FrozenDict", "inspect",
]
