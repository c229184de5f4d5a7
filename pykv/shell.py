"""`python -m pykv --shell`: a Python REPL on the running node, the `iex --sname` habit.

Python's own `python -m asyncio` technique: the node's event loop keeps running in the main
thread while a console thread reads lines. Each statement is compiled with top-level `await`
allowed and run on the loop (as a task when it awaits), so the node serves its peers while
you type or wait, and every call into the API happens on the loop's thread, as it must.
A statement that blocks (`time.sleep`) holds up the node, as in any asyncio program; Ctrl-C
cancels the statement that is running; Ctrl-D or `exit()` stops the node.
"""

from __future__ import annotations

import ast
import asyncio
import code
import concurrent.futures
import inspect
import sys
import textwrap
import threading
import traceback
import types
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from .node import Node


def namespace(node: "Node", extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the shell starts with: the node, a process of its own and the API."""
    import pykv
    from . import errors, term
    from .otp import gen_server, rpc, task_supervisor
    from .otp.gen_server import GenServer

    names: dict[str, Any] = {"__name__": "__console__", "__doc__": None, "asyncio": asyncio,
                             "node": node, "me": node.process(), "pykv": pykv, "errors": errors,
                             "gen_server": gen_server, "rpc": rpc, "task_supervisor": task_supervisor,
                             "GenServer": GenServer, "inspect": term.inspect}
    names.update({name: getattr(pykv, name) for name in pykv.__all__})
    names.update(extra or {})
    return names


def banner(node: "Node", names: dict[str, Any]) -> str:
    api = textwrap.fill(", ".join(n for n in names if not n.startswith("__") and n not in ("node", "me")),
                        width=96, initial_indent="In scope: ", subsequent_indent="  ")
    return (f"pykv shell on {node.name.name} (Python {sys.version.split()[0]}): `node` is this node, "
            f"`me` a process of its own.\n{api}.\n"
            "Top-level await works, e.g. `await rpc.call(node, \"bar@host\", \"erlang\", \"node\", [])`;"
            " the node keeps serving meanwhile.\nCtrl-C cancels a running statement; Ctrl-D or exit() stops the node.")


class NodeConsole(code.InteractiveConsole):
    """An InteractiveConsole whose code runs on the node's event loop."""

    def __init__(self, names: dict[str, Any], loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(names, filename="<pykv shell>")
        self.compile.compiler.flags |= ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        self.loop = loop
        # the statement typed last: "queued" for the loop, "running" as a task, else None
        self._state: str | None = None
        self._task: asyncio.Task[Any] | None = None
        self._interrupted = False

    def runcode(self, code_obj: types.CodeType) -> None:
        done: concurrent.futures.Future[None] = concurrent.futures.Future()

        def start() -> None:  # on the loop's thread
            if self._interrupted:  # Ctrl-C came between Enter and now
                done.set_exception(KeyboardInterrupt())
                return
            try:
                result = types.FunctionType(code_obj, self.locals)()
            except BaseException as e:  # SystemExit (exit()) too: the console thread re-raises it
                done.set_exception(e)
                return
            if not inspect.iscoroutine(result):
                done.set_result(None)
                return
            self._task = task = self.loop.create_task(result)
            self._state = "running"
            task.add_done_callback(lambda t: _settle(t, done))

        self._interrupted = False
        self._state = "queued"
        self.loop.call_soon_threadsafe(start)
        try:
            done.result()
        except SystemExit:
            raise
        except (asyncio.CancelledError, KeyboardInterrupt) as e:
            if self._interrupted:
                self.write("KeyboardInterrupt\n")
            else:
                self._show(e)
        except BaseException as e:
            self._show(e)
        finally:
            self._state = self._task = None

    def interrupt(self) -> None:
        """Ctrl-C (called on the loop's thread): cancel the statement typed last, whether
        it is running or still about to."""
        if self._state == "queued":
            self._interrupted = True
        elif self._state == "running" and self._task is not None and not self._task.done():
            self._interrupted = True
            self._task.cancel()
        else:
            self.write(f"\nKeyboardInterrupt (Ctrl-D or exit() stops the node)\n{getattr(sys, 'ps1', '>>> ')}")

    def _show(self, error: BaseException) -> None:
        """The traceback from the statement on, without the frames that carried it to the loop."""
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != self.filename:
            tb = tb.tb_next
        sys.last_type, sys.last_value, sys.last_traceback = type(error), error, tb
        self.write("".join(traceback.format_exception(type(error), error, tb or error.__traceback__)))


def _settle(task: "asyncio.Task[Any]", done: "concurrent.futures.Future[None]") -> None:
    if task.cancelled():
        done.set_exception(asyncio.CancelledError())
    elif task.exception() is not None:
        done.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        done.set_result(None)


def start(node: "Node", extra: dict[str, Any] | None, on_exit: Callable[[], None]) -> NodeConsole:
    """Start the console thread; `on_exit` runs on the loop when the shell ends."""
    loop = asyncio.get_running_loop()
    names = namespace(node, extra)
    console = NodeConsole(names, loop)
    import pydoc
    # help() runs on the loop like every statement: a pager waiting for keys would stop the node
    pydoc.pager = pydoc.plainpager
    try:
        import readline
        import rlcompleter
    except ImportError:  # no line editing here (Windows without pyreadline): plain input()
        pass
    else:
        readline.set_completer(rlcompleter.Completer(names).complete)
        readline.parse_and_bind("tab: complete")

    def run() -> None:
        try:
            console.interact(banner=banner(node, names), exitmsg="")
        except SystemExit:
            pass
        finally:
            loop.call_soon_threadsafe(on_exit)

    threading.Thread(target=run, name="pykv-shell", daemon=True).start()
    return console
