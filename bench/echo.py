"""Bench.Echo on foo, for `python -m bench`'s large-message shapes (`--load bench/echo.py`);
client.exs loads the same functions, in Elixir, onto the BEAM node."""

from pykv import export


@export("Bench.Echo", blocking=False)
def echo(value: object) -> object:
    return value


@export("Bench.Echo", blocking=False)
def size(value: bytes) -> int:
    return len(value)


@export("Bench.Echo", blocking=False)
def big(n: int) -> bytes:
    return b"\7" * n
