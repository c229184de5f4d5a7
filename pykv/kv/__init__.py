"""The key-value app of Elixir's Mix/OTP guide, on the Python node: buckets, the registry,
the router and the line-protocol server, under the guide's supervision tree. Message shapes
are the contract with elixir_peer, so a bucket pid from either language works from the other."""

from .app import start_kv, stop_kv

__all__ = ["start_kv", "stop_kv"]
