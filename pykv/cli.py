"""`python -m pykv --sname foo`: a node of the cluster serving the KV app.

Flags follow erl/iex where they overlap (--sname, --name, --cookie)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .kv import start_kv
from .loop import loop_factory
from .kv.table import TableError, everything_to, load_toml, parse_table
from .node import Node
from .term import codec

log = logging.getLogger("pykv")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pykv",
                                description="A Python node of an Erlang/Elixir cluster, serving the Mix/OTP guide's KV store.")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--sname", help="short node name, as `iex --sname foo` (foo@shorthost)")
    names.add_argument("--name", help="long node name, as `iex --name foo@host.domain`")
    p.add_argument("--cookie", help="the cluster cookie (default: $ERLANG_COOKIE, then ~/.erlang.cookie)")
    p.add_argument("--route", action="append", default=[], metavar="RANGE=NODE",
                   help="a routing-table entry, in order: a-m=foo, n-z=bar@otherhost, x=foo "
                        "(repeatable; a node without @ is on this host; default: every bucket here)")
    p.add_argument("--config", metavar="FILE.toml", help='a routing table in TOML: [routes] "a-m" = "foo"')
    p.add_argument("--route-timeout", type=float, default=5.0, help="seconds to await a forwarded request (5)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "4040")),
                   help="line-protocol port (default: $PORT, else 4040)")
    p.add_argument("--no-server", action="store_true", help="do not start the line-protocol server")
    p.add_argument("--bind", default="0.0.0.0", metavar="ADDRESS",
                   help="address the node and line-server ports listen on (default 0.0.0.0, all, "
                        "as erl; 127.0.0.1 keeps them to this machine)")
    p.add_argument("--dist-port", type=int, default=0, help="port for node connections (default: any free)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default=os.environ.get("PYKV_LOOP", "auto"),
                   help="event loop: uvloop when installed (pip install 'pykv[fast]'), else asyncio")
    p.add_argument("--busy-wait", type=int, default=int(os.environ.get("PYKV_BUSY_WAIT", "1000")), metavar="US",
                   help="after traffic, keep polling this many microseconds before sleeping, as BEAM "
                        "schedulers do: lower latency for some CPU; 0 turns it off (default 1000)")
    p.add_argument("--exit-on-stdin-close", action="store_true",
                   help="stop the node when standard input closes: for a parent that runs it "
                        "through a pipe (an Erlang port, say) and may die without stopping it")
    p.add_argument("--log-level", default=os.environ.get("PYKV_LOG", "INFO"))
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    node = Node(args.sname or args.name, args.cookie, longnames=args.name is not None,
                listen_host=args.bind, dist_port=args.dist_port, busy_wait=args.busy_wait / 1e6)
    host = node.name.name.partition("@")[2]
    if args.config and args.route:
        raise TableError("give the routing table with --route or --config, not both")
    table = load_toml(args.config, host) if args.config else parse_table(args.route, host)
    await node.start()
    try:
        await start_kv(node, table or everything_to(node.name), port=None if args.no_server else args.port,
                       route_timeout=args.route_timeout)
        log.info("KV app ready on %s (%s loop, %s codec); routing table: [%s]", node.name.name,
                 type(asyncio.get_running_loop()).__module__.split(".")[0], codec.IMPLEMENTATION,
                 ", ".join(repr(r) for r in table or everything_to(node.name)))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.exit_on_stdin_close:
            _stop_at_end_of_input(loop, stop)
        await stop.wait()
    finally:
        await node.stop()


def _stop_at_end_of_input(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)  # whatever the parent writes is ignored
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            log.info("standard input closed: stopping")
            stop.set()

    os.set_blocking(fd, False)
    loop.add_reader(fd, readable)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            runner.run(run(args))
    except (TableError, OSError) as e:
        log.error("%s", e)
        sys.exit(1)
