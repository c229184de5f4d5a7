"""Erlang terms in Python: the types (`types`) and the External Term Format codec (`codec`)."""

from .codec import (
    FAST_DEPTH, MAX_DECOMPRESSED, TermError, decode, decode_all, encode, encode_into, freeze,
)
from .types import (
    DEFAULT_MAX_ATOMS, Atom, AtomTableFull, BitBinary, ExportFun, FrozenDict, FrozenList, Fun,
    HashedTerm, ImproperList, Map, Pid, Port, Record, Reference, atom_count, exactly_equal, inspect,
    set_max_atoms,
)

__all__ = [
    "encode", "encode_into", "decode", "decode_all", "freeze", "TermError", "FAST_DEPTH",
    "MAX_DECOMPRESSED", "AtomTableFull", "set_max_atoms", "atom_count", "DEFAULT_MAX_ATOMS",
    "Atom", "Pid", "Reference", "Port", "ImproperList", "BitBinary", "ExportFun", "Fun",
    "FrozenList", "FrozenDict", "HashedTerm", "Map", "Record", "exactly_equal", "inspect",
]
