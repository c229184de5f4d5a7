"""`python -m pykv --sname foo`: a node of the cluster serving the KV app.

Flags follow erl/iex where they overlap (--sname, --name, --cookie). `--load` adds the
user's own modules, `--shell` a REPL on the node (the `iex` habit). A start that cannot
succeed (a name or port in use, a bad cookie file, a module that fails to import) stops
with one line that says what to do, and exit status 1, before the node says it is ready."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import socket
import sys
import traceback
from typing import Any, Callable

from .dist.cookie import CookieError
from .dist import epmd
from .dist.epmd import EpmdError
from .errors import Timeout
from .kv import start_kv
from .kv.app import stop_kv
from . import load as load_module
from .load import LoadError, load
from .loop import loop_factory
from .memory import keep_freed_memory
from .kv.table import TableError, everything_to, load_toml, parse_table
from .dist.names import NodeNameError
from .dist.tls import OptfileError, line_server_context
from .dist.tls_transport import TLS_PROTOCOLS, dist_protocol as tls_dist_protocol
from .dist.transport import PROTOCOLS, port_range
from .node import Node
from .term import DEFAULT_MAX_ATOMS, codec, inspect, set_max_atoms
from .threads import DEFAULT_QUEUE as THREAD_QUEUE, DEFAULT_THREADS, default_threads

log = logging.getLogger("pykv")


class StartError(Exception):
    """The node cannot start: the message says why and what to do."""


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.shell and args.exit_on_stdin_close:
        parser.error("--shell reads standard input: it cannot be combined with --exit-on-stdin-close")
    return args


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog or os.path.basename(sys.argv[0]),
                                description="A Python node of an Erlang/Elixir cluster, serving the Mix/OTP guide's KV store.")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--sname", help="short node name, as `iex --sname foo` (foo@shorthost)")
    names.add_argument("--name", help="long node name, as `iex --name foo@host.domain`")
    p.add_argument("--cookie", help="the cluster cookie (default: $ERLANG_COOKIE, then ~/.erlang.cookie)")
    p.add_argument("--visible", action="store_true",
                   help="connect as a normal (visible) node and run :global here, as a member of the "
                        "cluster (default: hidden, as `erl -hidden`)")
    p.add_argument("--global-group", metavar="NODE,NODE", default=None,
                   help="with --visible: the nodes of this node's global group, as kernel's global_groups")
    p.add_argument("--route", action="append", default=[], metavar="RANGE=NODE",
                   help="a routing-table entry, in order: a-m=foo, n-z=bar@otherhost, x=foo "
                        "(repeatable; a node without @ is on this host; default: every bucket here)")
    p.add_argument("--config", metavar="FILE.toml", help='a routing table in TOML: [routes] "a-m" = "foo"')
    p.add_argument("--route-timeout", type=float, default=5.0, help="seconds to await a forwarded request (5)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "4040")),
                   help="line-protocol port (default: $PORT, else 4040)")
    p.add_argument("--no-server", action="store_true", help="do not start the line-protocol server")
    p.add_argument("--bind", metavar="ADDRESS",
                   help="address the node and line-server ports listen on, as erl's -kernel "
                        "inet_dist_use_interface (default: every address, as erl; 127.0.0.1 keeps "
                        "them to this machine)")
    p.add_argument("--dist-port", type=_argument(port_range), default=(0, 0), metavar="PORT|MIN-MAX",
                   help="port for node connections, or the first free one of a range, as erl's "
                        "-kernel inet_dist_listen_min MIN inet_dist_listen_max MAX (default: any free)")
    p.add_argument("--proto-dist", default="inet_tcp", choices=tuple(PROTOCOLS) + TLS_PROTOCOLS,
                   help="what carries node connections, as erl's -proto_dist: inet_tcp (IPv4, the "
                        "default) or inet6_tcp (IPv6: host names resolve to IPv6 addresses, epmd too); "
                        "inet_tls / inet6_tls: the same over TLS, with --ssl-dist-optfile")
    p.add_argument("--ssl-dist-optfile", metavar="FILE",
                   help="TLS options for inet_tls, as erl's -ssl_dist_optfile: the cluster's "
                        "[{server, [...]}, {client, [...]}] file (certfile, keyfile, cacertfile, "
                        "verify, fail_if_no_peer_cert, versions...)")
    p.add_argument("--line-tls-certfile", metavar="PEM",
                   help="serve the line protocol over TLS with this certificate (and its key, "
                        "unless --line-tls-keyfile)")
    p.add_argument("--line-tls-keyfile", metavar="PEM", help="the line server certificate's key")
    p.add_argument("--line-tls-cacertfile", metavar="PEM",
                   help="the CA whose certificates line clients must show (with --line-tls-verify verify_peer)")
    p.add_argument("--line-tls-verify", choices=("verify_none", "verify_peer"), default="verify_none",
                   help="verify_peer: every line client must show a certificate from "
                        "--line-tls-cacertfile's CA (default verify_none: any client)")
    p.add_argument("--net-ticktime", type=_argument(_ticktime), default=60, metavar="SECONDS",
                   help="a peer silent this long is down, as erl's -kernel net_ticktime (default "
                        "60; give every node of a cluster the same)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default=os.environ.get("PYKV_LOOP", "auto"),
                   help="event loop: uvloop when installed (pip install 'pykv[fast]'), else asyncio")
    p.add_argument("--busy-wait", type=int, default=int(os.environ.get("PYKV_BUSY_WAIT", "1000")), metavar="US",
                   help="after traffic, keep polling this many microseconds before sleeping, as BEAM "
                        "schedulers do: lower latency for some CPU; 0 turns it off (default 1000)")
    p.add_argument("--exit-on-stdin-close", action="store_true",
                   help="stop the node when standard input closes: for a parent that runs it "
                        "through a pipe (an Erlang port, say) and may die without stopping it")
    p.add_argument("--log-level", default=os.environ.get("PYKV_LOG", "INFO"),
                   metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR (default: $PYKV_LOG, else INFO)")
    p.add_argument("--load", action="append", default=[], metavar="MODULE",
                   help="serve this module's exports (declared with @pykv.export) beside the KV app: "
                        "a file (examples/hello.py) or a module name (repeatable)")
    p.add_argument("--shell", action="store_true",
                   help="a Python REPL on the node, with `node` and the API in scope and top-level "
                        "await (the node keeps serving); Ctrl-D stops the node")
    p.add_argument("--no-introspection", action="store_true",
                   help="do not serve the read-only erlang:processes/0, process_info/1,2, "
                        "system_info/1... built-ins (see the README)")
    p.add_argument("--threads", type=int, default=default_threads(), metavar="N",
                   help="threads for blocking exports, a pool of their own; past them and "
                        f"{THREAD_QUEUE} waiting calls a call fails with system_limit "
                        f"(default: $PYKV_THREADS, else {DEFAULT_THREADS})")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes for CPU-bound exports (@export(..., workers=True)), "
                        "started on first use (default: $PYKV_WORKERS, else one per core)")
    p.add_argument("--max-atoms", type=int, default=DEFAULT_MAX_ATOMS, metavar="N",
                   help="the atom table's bound, as erl +t: a term from a peer that would create "
                        f"an atom past it closes that connection (default {DEFAULT_MAX_ATOMS:,})")
    p.add_argument("--shutdown-timeout", type=float, default=4.0, metavar="SECONDS",
                   help="on SIGTERM or Ctrl-C, how long the KV tree may take to stop, children "
                        "in reverse order, before the node stops anyway (default 4)")
    return p


def _argument(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _ticktime(text: str) -> int:
    seconds = int(text)  # erl takes whole seconds
    if seconds < 1:
        raise ValueError(f"net_ticktime is at least 1 second, not {seconds}")
    return seconds


async def run(args: argparse.Namespace) -> None:
    # Ctrl-C and SIGTERM stop the node cleanly from the first moment, during the start too;
    # a second one exits at once
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    name = [args.sname or args.name]

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("%s again: exiting at once", signal.Signals(signum).name)
            logging.shutdown()
            os._exit(1)
        log.info("stopping %s (%s)", name[0], signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    set_max_atoms(args.max_atoms)
    # the user's modules first: one that fails to import stops the start before anything runs
    loaded = [load(spec) for spec in args.load]
    carrier, line_tls = _tls(args)
    node = Node(args.sname or args.name, args.cookie, longnames=args.name is not None,
                listen_host=args.bind, dist_port=args.dist_port, proto_dist=carrier,
                ticktime=args.net_ticktime, busy_wait=args.busy_wait / 1e6,
                threads=args.threads, workers=args.workers, hidden=not args.visible)
    name[0] = node.name.name
    if args.visible and os.environ.get("PYKV_EXPERIMENTAL_VISIBLE") != "1":
        # issue 14 (blocked): a 25-minute soak left a lock of global's held on this node after
        # reconnects, and every registration here then waited on it: not safe to offer yet
        raise TableError("--visible is not safe to use yet (issue 14: a global lock can stay held "
                         "after reconnects); set PYKV_EXPERIMENTAL_VISIBLE=1 to try it anyway")
    if args.global_group is not None and not args.visible:
        raise TableError("--global-group needs --visible (a hidden node is in no global group)")
    host = node.name.name.partition("@")[2]
    if args.config and args.route:
        raise TableError("give the routing table with --route or --config, not both")
    table = (load_toml(args.config, host, node.longnames) if args.config
             else parse_table(args.route, host, node.longnames))
    low, high = args.dist_port
    if low == high:  # a range takes the first free port of it: nothing to check before
        _check_port_free(args.bind, low, "--dist-port")
    if not args.no_server:
        _check_port_free(args.bind, args.port, "--port (or $PORT), the line server's")
    try:
        await node.start()
    except EpmdError as e:
        raise StartError(await _why_epmd_refused(node, e)) from None
    try:
        if args.visible:
            from .otp import global_server
            group = None if args.global_group is None else [  # a bare name is on this host, as in --route
                n if "@" in n else f"{n}@{host}" for n in args.global_group.split(",") if n]
            global_server.GlobalServer.start(node, group)
        if not args.no_introspection:
            from .otp import introspection
            introspection.install(node)
        for (module, declarations), spec in zip(loaded, args.load):
            served = node.exports.add_declared(declarations)
            log.info("loaded %s: %s", spec, ", ".join(f"{inspect(m)}.{f.name}/{a}" for m, f, a in served)
                     or "it declares no exports (@pykv.export)")
        _, line_server = await start_kv(node, table or everything_to(node.name),
                                        port=None if args.no_server else args.port,
                                        route_timeout=args.route_timeout, tls=line_tls)
        loop_name = type(loop).__module__.split(".")[0]
        if codec.IMPLEMENTATION == "python" and os.environ.get("PYKV_CODEC", "auto") == "auto":
            log.warning("the C codec (pykv.term._speedups) is not built: running the pure-Python one, "
                        "5-25x slower; reinstall with a C compiler and the Python headers (pip install -e .)")
        if loop_name == "asyncio" and args.loop == "auto":
            log.warning("uvloop is not installed: running asyncio's own loop (pip install uvloop)")
        log.info("KV app ready on %s (%s loop, %s codec); routing table: [%s]", node.name.name,
                 loop_name, codec.IMPLEMENTATION,
                 ", ".join(repr(r) for r in table or everything_to(node.name)))
        if args.shell and not stop.is_set():
            from . import shell
            console = shell.start(node, {m.__name__: m for m, _ in loaded}, stop.set)
            # Ctrl-C cancels a statement; Ctrl-D stops the node
            loop.add_signal_handler(signal.SIGINT, console.interrupt)
        if args.exit_on_stdin_close:
            _stop_at_end_of_input(loop, stop)
        await stop.wait()
        await _stop_app(node, line_server, args.shutdown_timeout)
    finally:
        await node.stop()
    log.info("%s stopped", node.name.name)
    if node.exports.pool.in_use:
        # a blocking export still running in a thread: Python cannot stop it, and would wait
        # for it at exit; the node has stopped, so the process ends now
        log.warning("%d blocking calls still running in threads: exiting without them", node.exports.pool.in_use)
        logging.shutdown()
        os._exit(0)


def _tls(args: argparse.Namespace) -> tuple[Any, Any]:
    """The carrier (a TLS one from --ssl-dist-optfile) and the line server's TLS context."""
    carrier: Any = args.proto_dist
    if args.proto_dist in TLS_PROTOCOLS:
        if not args.ssl_dist_optfile:
            raise StartError(f"--proto-dist {args.proto_dist} needs --ssl-dist-optfile FILE "
                             "(the cluster's optfile, as erl's -ssl_dist_optfile)")
        carrier = tls_dist_protocol(args.proto_dist, args.ssl_dist_optfile)
    elif args.ssl_dist_optfile:
        raise StartError("--ssl-dist-optfile is for --proto-dist inet_tls (or inet6_tls): "
                         "give that too, or leave the optfile out")
    line_tls = None
    if args.line_tls_certfile:
        line_tls = line_server_context(args.line_tls_certfile, args.line_tls_keyfile,
                                       args.line_tls_cacertfile, args.line_tls_verify)
    elif args.line_tls_keyfile or args.line_tls_cacertfile or args.line_tls_verify != "verify_none":
        raise StartError("the --line-tls-* flags need --line-tls-certfile (the line server's certificate)")
    return carrier, line_tls


async def _stop_app(node: Node, line_server: asyncio.base_events.Server | None, timeout: float) -> None:
    """Stop as a BEAM node's init:stop() does: the app's tree first, children in reverse
    order, each within its shutdown time, while the connections are up (remote links get
    the exit signals, `shutdown`); then the node (its connections, epmd registration)."""
    if line_server is not None:
        line_server.close()  # no new clients; the sessions end with their processes
    try:
        await stop_kv(node, timeout)
    except (Timeout, asyncio.TimeoutError):
        log.warning("the KV tree did not stop within %.1f s: stopping the node anyway", timeout)


async def _why_epmd_refused(node: Node, error: EpmdError) -> str:
    alive = node.name.name.partition("@")[0]
    try:
        taken = any(name == alive for name, _ in await epmd.names(port=node.epmd_port))
    except (OSError, EpmdError):
        taken = False
    if taken:  # erl: "the name foo@host seems to be in use by another Erlang node"
        return (f"the name {node.name.name} is in use by another node on this host (epmd refused "
                "to register it): stop that node, or choose another name")
    return f"cannot start {node.name.name}: {error}"


def _check_port_free(address: str | None, port: int, flag: str) -> None:
    """Fail before the node says it is ready, not after, when a port it needs is taken."""
    if not port:
        return
    address = address or "0.0.0.0"
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's servers do
        try:
            s.bind((address, port))
        except OSError as e:
            raise StartError(f"port {port} on {address} ({flag}) is not available: {e.strerror}; "
                             "stop what listens there, or choose another port") from None


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


def _print_user_traceback(error: BaseException) -> None:
    """A failed import's traceback from the user's own code on (the import machinery and
    pykv's loader are left out); nothing when it failed before any of the user's code ran
    (a module name that does not exist)."""
    tb = error.__traceback__
    while tb is not None and _is_import_machinery(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    if tb is not None:
        traceback.print_exception(type(error), error, tb)


def _is_import_machinery(filename: str) -> bool:
    return (filename.startswith("<frozen importlib") or filename == load_module.__file__
            or filename == importlib.__file__)


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    args = parse_args(argv, prog)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keep_freed_memory()  # large messages reuse what the last one freed (pykv/memory.py)
    try:
        with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
            runner.run(run(args))
    except LoadError as e:
        if e.__cause__ is not None:
            _print_user_traceback(e.__cause__)
        log.error("%s", e)
        sys.exit(1)
    except (StartError, CookieError, TableError, NodeNameError, OptfileError, OSError) as e:
        log.error("%s", e)
        sys.exit(1)
