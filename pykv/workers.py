"""Worker processes for CPU-bound exports: Python that uses every core.

Threads share one GIL, so a CPU-bound export called from the BEAM scales with nothing. An
export declared `workers=True` runs instead in a pool of worker processes (`python -m
pykv._worker`), one call at a time each; arguments and results cross as terms (the External
Term Format, over a pipe of their own, so the worker's stdout stays the user's). A worker
imports the function by its module and qualified name, so it must be a module-level function.

A worker that dies is replaced, and the call it was running fails with an error the caller
understands (a RuntimeError naming the exit status), never a hang. A call whose caller gave up
(a cancelled task) kills its worker: unlike a thread, a process can be stopped.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
import os
import struct
import sys
import time
from collections import deque
from typing import Any, Callable

from .errors import ErlangError, Raised, classify
from .logs import RateLimit
from .term import Atom, TermError, decode_all, encode

log = logging.getLogger("pykv.workers")

OK, ERROR = Atom("ok"), Atom("error")
DEFAULT_QUEUE = 1024
_LENGTH = struct.Struct(">I")
_warnings = RateLimit(burst=3, window=10.0)


def default_workers() -> int:
    return int(os.environ.get("PYKV_WORKERS", os.cpu_count() or 1))


def locate(fn: Callable[..., Any]) -> tuple[str, str, str]:
    """(module name, its file, qualified name): how a worker finds `fn` again."""
    qualname = fn.__qualname__
    if "<locals>" in qualname or "<lambda>" in qualname:
        raise ValueError(f"{qualname} cannot run in a worker process: a worker imports the "
                         "function, so it must be defined at module level")
    module = sys.modules.get(fn.__module__)
    path = getattr(module, "__file__", None) or ""
    return fn.__module__, path, qualname


class WorkerCrashed(RuntimeError):
    pass


class _Call:
    __slots__ = ("target", "args", "future", "worker")

    def __init__(self, target: tuple[str, str, str], args: list[Any], future: asyncio.Future[Any]) -> None:
        self.target = target
        self.args = args
        self.future = future
        self.worker: _Worker | None = None


class _Worker:
    """One worker process and the pipes to it."""

    def __init__(self, pool: "WorkerPool", number: int) -> None:
        self.pool = pool
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: Any = None
        self.call: _Call | None = None
        self.ready = False
        self.started_at = 0.0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        # the worker finds the same modules the node runs with (the node's sys.path)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pykv._worker", str(to_child), str(from_child),
                pass_fds=(to_child, from_child), stdin=asyncio.subprocess.DEVNULL, env=env)
        finally:
            os.close(to_child)
            os.close(from_child)
        self.started_at = time.monotonic()
        self.reader = asyncio.StreamReader(limit=2**31)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.reader),
                                     os.fdopen(to_parent, "rb", buffering=0))
        self.writer, _ = await loop.connect_write_pipe(asyncio.Protocol, os.fdopen(from_parent, "wb", buffering=0))
        self.ready = True
        loop.create_task(self._serve())

    def run(self, call: _Call) -> None:
        self.call = call
        call.worker = self
        body = encode((call.target[0], call.target[1], call.target[2], call.args))
        self.writer.write(_LENGTH.pack(len(body)) + body)

    async def _serve(self) -> None:
        """Read results until the process goes; then fail its call and replace it."""
        reader = self.reader
        assert reader is not None and self.process is not None
        try:
            while True:
                head = await reader.readexactly(4)
                reply = decode_all(await reader.readexactly(_LENGTH.unpack(head)[0]))
                call, self.call = self.call, None
                if call is not None and not call.future.done():
                    if reply[0] is OK:
                        call.future.set_result(reply[1])
                    else:
                        call.future.set_exception(Raised(reply[1], reply[2], reply[3]))
                self.pool._worker_free(self)
        except (asyncio.IncompleteReadError, ConnectionError, TermError, IndexError, TypeError):
            pass
        status = await self.process.wait()
        self.ready = False
        self.writer.close()
        call, self.call = self.call, None
        if call is not None and not call.future.done():
            module, _, qualname = call.target
            call.future.set_exception(WorkerCrashed(
                f"the worker process running {module}.{qualname}/{len(call.args)} exited "
                f"with status {status}"))
        self.pool._worker_gone(self, status)

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()


class WorkerPool:
    """`size` worker processes, started on first use; at most `queue` calls wait for one."""

    def __init__(self, size: int | None = None, queue: int = DEFAULT_QUEUE) -> None:
        self.size = size or default_workers()
        if self.size < 1 or queue < 0:
            raise ValueError(f"a worker pool needs at least one worker and a queue >= 0 "
                             f"(got {self.size} workers, queue {queue})")
        self.queue = queue
        self._workers: list[_Worker] = []
        self._idle: deque[_Worker] = deque()
        self._waiting: deque[_Call] = deque()
        self._starting: asyncio.Task[None] | None = None
        self._restarts: deque[float] = deque()
        self._stopped = False

    async def start(self) -> None:
        """Start the workers now rather than on the first call (they take a moment)."""
        if self._starting is None:
            self._starting = asyncio.get_running_loop().create_task(self._start_all())
        await asyncio.shield(self._starting)

    async def _start_all(self) -> None:
        self._workers = [_Worker(self, n) for n in range(self.size)]
        await asyncio.gather(*(w.start() for w in self._workers))
        self._idle.extend(self._workers)
        log.info("%d worker processes ready for CPU-bound exports", self.size)

    async def run(self, fn: Callable[..., Any], args: list[Any]) -> Any:
        if self._stopped:
            raise WorkerCrashed("the worker pool is stopped")
        if len(self._waiting) >= self.queue:
            _warnings.log(log, logging.WARNING, "full",
                          "worker pool full (%d workers busy, %d calls waiting): refusing a call "
                          "to %s with system_limit; raise --workers if that is expected",
                          self.size, self.queue, fn.__qualname__)
            raise ErlangError(Atom("system_limit"))
        await self.start()
        call = _Call(locate(fn), list(args), asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        self._dispatch()
        try:
            return await call.future
        except asyncio.CancelledError:
            # the caller gave up: a queued call is forgotten, a running one stops its worker
            if call.worker is not None and call.worker.call is call:
                call.worker.kill()
            elif call in self._waiting:
                self._waiting.remove(call)
            raise

    def _dispatch(self) -> None:
        while self._idle and self._waiting:
            call = self._waiting.popleft()
            if call.future.done():
                continue
            worker = self._idle.popleft()
            try:
                worker.run(call)
            except TermError as e:  # an argument with no term form: that call fails
                worker.call = None
                self._idle.appendleft(worker)
                call.future.set_exception(TypeError(f"arguments for a worker process: {e}"))

    def _worker_free(self, worker: _Worker) -> None:
        self._idle.append(worker)
        self._dispatch()

    def _worker_gone(self, worker: _Worker, status: int) -> None:
        if worker in self._idle:
            self._idle.remove(worker)
        if self._stopped:
            return
        log.warning("worker process %d exited with status %s: starting another", worker.number, status)
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and now - self._restarts[0] > 5:
            self._restarts.popleft()
        delay = 1.0 if len(self._restarts) > 3 else 0.0  # one that dies at start: not in a loop
        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(self._replace(worker)))

    async def _replace(self, old: _Worker) -> None:
        if self._stopped:
            return
        new = _Worker(self, old.number)
        self._workers[self._workers.index(old)] = new
        try:
            await new.start()
        except OSError as e:
            log.error("cannot start a worker process: %s", e)
            return
        self._worker_free(new)

    def stop(self) -> None:
        self._stopped = True
        for worker in self._workers:
            worker.kill()
        for call in self._waiting:
            if not call.future.done():
                call.future.set_exception(WorkerCrashed("the node is stopping"))
        self._waiting.clear()


# -- the worker side -----------------------------------------------------------------------------

def _resolve(cache: dict[tuple[str, str, str], Callable[..., Any]],
             target: tuple[str, str, str]) -> Callable[..., Any]:
    fn = cache.get(target)
    if fn is not None:
        return fn
    module_name, path, qualname = target
    if module_name == "__main__":  # the node's own script: load it under another name
        module_name = "__pykv_main__"
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            if not path:
                raise
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            spec.loader.exec_module(module)
    obj: Any = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    obj = getattr(obj, "__wrapped__", obj)  # the function under the export decorator
    cache[target] = obj
    return obj


def _read(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def worker_main(rfd: int, wfd: int) -> None:
    cache: dict[tuple[str, str, str], Callable[..., Any]] = {}
    while True:
        try:
            head = _read(rfd, 4)
        except EOFError:
            return  # the node closed the pipe: it is stopping
        module_name, path, qualname, args = decode_all(_read(rfd, _LENGTH.unpack(head)[0]))
        try:
            result = _resolve(cache, (module_name.decode(), path.decode(), qualname.decode()))(*args)
            reply = encode((OK, result))
        except BaseException as e:  # noqa: B036 - everything the function does goes back
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise
            kind, reason, stack = classify(e)
            try:
                reply = encode((ERROR, kind, reason, stack))
            except TermError:
                reply = encode((ERROR, *classify(TypeError(f"{type(e).__name__}: {e}"))))
        _write(wfd, _LENGTH.pack(len(reply)) + reply)

