"""Driving interactive programs as a person at a terminal does: iex through a pipe (it reads
one expression per line and prints a prompt after each answer), a Python REPL through a pty,
and the text rules that compare what they print with what a document says they print."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import re
import signal
import struct
import subprocess
import termios
from collections import Counter
from typing import Sequence

IEX_PROMPT = re.compile(r"iex\([^)]*\)\d+> ")
ANSI = re.compile(r"\x1b(\[[0-9;?]*[a-zA-Z]|\][^\x07]*\x07|[=>])")
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
# the node's log lines, which come whenever they come (the middle of a prompt too)
LOG_TEXT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR) [^\n]*\n")
ANNOTATION = re.compile(r"\s{2,}#\s.*$|^\s*#\s.*$")


def strip_annotation(line: str) -> str:
    """`text   # a comment for the reader` -> `text` (two spaces at least before the #)."""
    return ANNOTATION.sub("", line).rstrip()


def normalize_ids(text: str) -> str:
    """Pids and references as placeholders: a local pid (`#PID<0.x.y>`) stays local, a
    remote one remote; pykv's own form (`#PID<node.x.y>`) and `#PID<...>` become `#PID<...>`."""
    text = re.sub(r"#PID<0\.\d+\.\d+>", "#PID<0.N.N>", text)
    text = re.sub(r"#PID<[1-9]\d*\.\d+\.\d+>", "#PID<R.N.N>", text)
    text = re.sub(r"#PID<[^>]*[^>.\dN][^>]*>", "#PID<...>", text)
    return re.sub(r"#Reference<[^>]*>", "#Reference<...>", text)


def without_stacktraces(lines: Sequence[str]) -> list[str]:
    """An error's stacktrace lines (indented, under `** (...)`) left out: they name file
    lines and library versions that differ from one generation to the next."""
    out, in_error = [], False
    for line in lines:
        if line.startswith("** ("):
            in_error = True
        elif in_error and line.startswith("    "):
            continue
        else:
            in_error = False
        out.append(line)
    return out


def same_lines(actual: Sequence[str], expected: Sequence[str]) -> bool:
    """Equal as lines; their order within one answer may differ: what a remote process
    prints through the caller's group leader races with the shell printing the result,
    between BEAM nodes too."""
    return Counter(actual) == Counter(expected)


class Iex:
    """`iex ... ` with its standard input a pipe: no echo, no colours, a prompt per answer."""

    def __init__(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> None:
        self.argv, self.cwd, self.env = argv, cwd, env
        self.proc: asyncio.subprocess.Process | None = None
        self.buffer = ""
        self.transcript = ""

    async def start(self, timeout: float = 90) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=self.cwd, env=self.env, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        await self._read_until(lambda: IEX_PROMPT.search(self.buffer) is not None, timeout,
                               "the first iex prompt")
        preamble, self.buffer = IEX_PROMPT.split(self.buffer, maxsplit=1)[0], ""
        return preamble

    async def step(self, line: str, expected: list[str], timeout: float = 30) -> list[str]:
        """Type `line`; wait until the answer (the text before the next prompt, then what
        may still come) has the expected lines. Returns the answer's lines."""
        assert self.proc is not None and self.proc.stdin is not None
        self.transcript += f"iex> {line}\n"
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        answer: list[str] = []

        def done() -> bool:
            nonlocal answer
            if not IEX_PROMPT.search(self.buffer):
                return False
            text = IEX_PROMPT.sub("", self.buffer)
            answer = without_stacktraces([normalize_ids(l.rstrip()) for l in text.splitlines()])
            answer = [l for l in answer if l]
            return same_lines(answer, expected)

        try:
            await self._read_until(done, timeout, f"the answer to {line!r}")
        except AssertionError as e:
            raise AssertionError(f"{e}\nexpected: {expected}\nseen:     {answer}\n"
                                 f"--- iex so far ---\n{self.transcript}{self.buffer}") from None
        self.transcript += self.buffer
        self.buffer = ""
        return answer

    async def _read_until(self, done, timeout: float, what: str) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"iex: no {what} within {timeout} s")
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(65536), min(remaining, 0.5))
            except asyncio.TimeoutError:
                continue
            if not chunk:
                if done():
                    return
                raise AssertionError(f"iex exited before {what}:\n{self.transcript}{self.buffer}")
            self.buffer += chunk.decode(errors="replace")

    async def stop(self) -> str:
        if self.proc is None:
            return self.transcript
        if self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()  # end of input: iex halts
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.transcript + self.buffer


def _own_terminal() -> None:
    """In the child: a session of its own whose controlling terminal is the pty, so that
    Ctrl-C typed there is a SIGINT, as at a keyboard."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyProgram:
    """A program on a pseudo-terminal: it sees a tty (readline, echo), as at a keyboard."""

    def __init__(self, argv: list[str], *, cwd: str, env: dict[str, str]) -> None:
        master, slave = pty.openpty()
        # a wide terminal: readline then echoes a long line as typed, not scrolled
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 400, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     preexec_fn=_own_terminal)
        os.close(slave)
        self.output = ""

    def _read(self, timeout: float) -> str:
        import select
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return ""
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: the program closed the terminal (it exited)
            return "\x00"
        return data.decode(errors="replace")

    def read_until(self, pattern: str | re.Pattern[str], timeout: float = 30, since: int = 0) -> str:
        """Everything read so far (from offset `since` of the output) once `pattern` shows
        there, with terminal escapes, \\r and the node's log lines removed."""
        import time
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            clean = LOG_TEXT.sub("", ANSI.sub("", self.output[since:]).replace("\r", ""))
            if regex.search(clean):
                return clean
            remaining = deadline - time.monotonic()
            chunk = self._read(max(0.0, min(remaining, 0.5))) if remaining > 0 else ""
            if chunk == "\x00" or (remaining <= 0 and not chunk):
                raise AssertionError(f"no {regex.pattern!r} within {timeout} s; the terminal shows:\n{clean}")
            self.output += chunk

    def type(self, text: str) -> int:
        """Type `text`; returns the output's offset before it, for `read_until(since=...)`."""
        since = len(self.output)
        os.write(self.master, text.encode())
        return since

    def interrupt(self) -> None:
        self.type("\x03")  # Ctrl-C, as the terminal delivers it: SIGINT to the foreground program

    def wait(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"the program did not exit within {timeout} s:\n{self.output}")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        os.close(self.master)


def repl_answer(screen: str, typed: str, prompt: str = ">>> ") -> list[str]:
    """The lines a REPL printed for `typed`, from the cleaned screen since it was typed:
    after the echo of the line, before the next prompt; the node's log lines left out."""
    body = screen[screen.index(typed) + len(typed):]
    end = body.find(prompt)
    body = body[:end] if end >= 0 else body
    return [l.rstrip() for l in body.splitlines() if l.strip() and not LOG_LINE.match(l)]
