"""`python -m pykv --sname foo`: start the node (and, later, the KV app)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .node import Node


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pykv", description="A Python node of an Erlang/Elixir cluster.")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--sname", help="short node name, as `iex --sname foo` (foo@shorthost)")
    names.add_argument("--name", help="long node name, as `iex --name foo@host.domain`")
    p.add_argument("--cookie", help="the cluster cookie (default: $ERLANG_COOKIE, then ~/.erlang.cookie)")
    p.add_argument("--dist-port", type=int, default=0, help="port for node connections (default: any free)")
    p.add_argument("--log-level", default=os.environ.get("PYKV_LOG", "INFO"))
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    node = Node(args.sname or args.name, args.cookie, longnames=args.name is not None,
                dist_port=args.dist_port)
    await node.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await node.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))
