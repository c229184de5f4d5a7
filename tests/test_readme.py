"""README.md, done as a newcomer does it, against real nodes, compared with what it says.

The README's own code blocks are parsed and run: the first command, the walkthrough's two
terminals (the line for the BEAM generation under test), its iex lines and nc session, the
shell session, and the Python tour. What they print must be what the README prints, with
only these placeholders and rules:

- `myhost` is this host's short name. The test gives the README's node names (foo, bar, py,
  shell) unique names and the line port (4040) a free one, as every test here does; the cookie
  is a fresh one in a `~/.erlang.cookie` of a home of the test's own (both sides read it,
  as the README says);
- in a log line `...` stands for the time stamp, and the dist port is any number;
- pids and references are any pid (of the same kind: local `#PID<0.x.y>` or remote) and any
  reference; the Python tour prints pykv's own forms as `#PID<...>`, `#Reference<...>`;
- text after two spaces and `# ` is a note for the reader, and so is a line holding only a
  note; in the nc session the note "after `CMD` from another client:" has the test send CMD
  on a second connection;
- within one iex answer lines may come in any order (what foo prints through the caller's
  group leader races with the shell printing the result, between BEAM nodes too), and an
  error's stacktrace lines (under `** (...)`) are not compared;
- where the C codec or uvloop is missing (never in CI), the documented warning and the
  `python codec` / `asyncio loop` words stand in for them.

Only the README's sections used here matter: other sections may come and go.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOST, ROOT, BeamNode, free_port, run, unique, wait_for_kv
from drivers import Iex, PtyProgram, normalize_ids, repl_answer, strip_annotation
from pykv.cli import build_parser
from pykv.otp import introspection

README = (ROOT / "README.md").read_text()
LOG_TIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


# -- the README's text ----------------------------------------------------------------------

def section(title: str) -> str:
    """The text under the heading that starts with `title`, up to the next heading of the
    same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(title)}.*$", README, re.M)
    assert match, f"README.md has no section {title!r}"
    level = len(match.group(1))
    rest = README[match.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.M)
    return rest[:end.start()] if end else rest


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """The fenced code blocks of a text: (language, lines)."""
    return [(m.group(1), m.group(2).splitlines())
            for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.M | re.S)]


def block_starting(text: str, start: str, language: str = "console") -> list[str]:
    found = [lines for lang, lines in blocks(text) if lang == language and lines and lines[0].startswith(start)]
    assert found, f"no {language} block starting with {start!r}"
    return found[0]


class Names:
    """The README's node names and port, as this run has them."""

    def __init__(self) -> None:
        self.nodes = {name: unique(name) for name in ("foo", "bar", "py", "shell")}
        self.port = free_port()

    def __call__(self, text: str) -> str:
        text = text.replace("myhost", HOST)
        for name, ours in self.nodes.items():
            text = re.sub(rf"(?<![\w.-]){name}(?![\w.-])", ours, text)  # not hello.py, --shell
        return re.sub(r"\b4040\b", str(self.port), text)


def log_lines(lines: list[str]) -> list[str]:
    """A node's log lines as the README prints them: `...` for the time, any dist port."""
    out = []
    for line in lines:
        line = LOG_TIME.sub("... ", line.rstrip())
        out.append(re.sub(r"dist port \d+", "dist port N", line))
    return out


def documented_variant(lines: list[str]) -> list[str]:
    """Outside CI, without the C codec or uvloop: the README's words for what it says then."""
    if os.environ.get("CI"):
        return lines
    out = []
    for line in lines:
        if "WARNING pykv:" in line and ("C codec" in line or "uvloop" in line):
            continue
        out.append(line.replace("(asyncio loop,", "(uvloop loop,").replace(" python codec)", " c codec)"))
    return out


@pytest.fixture
def home(tmp_path: Path, cookie: str) -> Path:
    """A home with the run's cookie in ~/.erlang.cookie (mode 0400, as erl creates it)."""
    path = tmp_path / "home"
    path.mkdir()
    (path / ".erlang.cookie").write_text(cookie)
    (path / ".erlang.cookie").chmod(0o400)
    return path


def environment(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HOME": str(home), **extra}


async def start_python_node(command: str, names: Names, home: Path) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Run a README `python -m pykv ...` command; returns the process and its start-up lines
    (up to "KV app ready")."""
    argv = shlex.split(names(command))
    assert argv[:3] == ["python", "-m", "pykv"], argv
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv[1:], cwd=ROOT, env=environment(home, PORT=str(names.port)),
        stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines = []
    while not lines or "KV app ready" not in lines[-1]:
        line = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert line, "the node exited before it was ready:\n" + "".join(lines)
        lines.append(line.decode().rstrip())
    return proc, lines


async def stop_with_ctrl_c(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    assert proc.stderr is not None
    rest = await asyncio.wait_for(proc.stderr.read(), 30)
    return await proc.wait(), rest.decode(errors="replace")


def check_startup(lines: list[str], expected: list[str], names: Names) -> None:
    want = log_lines([names(l) for l in expected])
    assert documented_variant(log_lines(lines)) == want, "\n".join(
        ["the node printed:"] + lines + ["", "README.md says:"] + want)


# -- the tests ----------------------------------------------------------------------------------

def test_the_first_command_prints_what_the_readme_shows(home: Path) -> None:
    block = block_starting(section("The two commands"), "$ pip install -e .")
    install, _, command = block[0][2:].partition(" && ")
    assert install == "pip install -e ."
    names = Names()

    async def main() -> None:
        proc, lines = await start_python_node(command, names, home)
        check_startup(lines, block[1:], names)
        code, rest = await stop_with_ctrl_c(proc)
        assert code == 0 and "Traceback" not in rest, rest  # "Ctrl-C stops the node"

    run(main())


def test_the_load_example_is_examples_hello() -> None:
    lines = [lines for lang, lines in blocks(section("Your own code in the node")) if lang == "python"][0]
    assert "\n".join(lines) in (ROOT / "examples" / "hello.py").read_text()


def test_every_flag_and_built_in_is_in_the_readme() -> None:
    flags = [o for action in build_parser("pykv")._actions for o in action.option_strings if o.startswith("--")]
    missing = [f for f in flags if f"`{f}" not in README and f != "--help"]
    assert not missing, f"flags the README does not describe: {missing}"
    table = section("Built-ins")
    for function, arity, _ in introspection.BUILT_INS:
        assert re.search(rf"`erlang:{function}/[\d,]*{arity}", table), f"erlang:{function}/{arity}"
    for item in [*introspection.SYSTEM_INFO, *introspection.ITEMS]:
        assert f"`{item.name}`" in table, f"README's built-ins do not list {item.name}"


def otp_release() -> str:
    return subprocess.run(["erl", "-noshell", "-eval", 'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
                          capture_output=True, text=True, check=True).stdout.strip()


def terminal_2(walkthrough: str, names: Names, home: Path) -> tuple[list[str], dict[str, str], Path]:
    """The README's terminal-2 command for the BEAM generation under test: argv, env, cwd."""
    block = block_starting(walkthrough, "$ cd elixir_peer")
    commands = {}
    for line in block[1:]:
        match = re.match(r"\$ (.*?)\s+# OTP (\d+) \+ Elixir", line)
        assert match, f"a terminal-2 line without its generation: {line!r}"
        commands[match.group(2)] = match.group(1)
    assert set(commands) == {"25", "27", "29"}, "the walkthrough names every generation scripts/test.sh runs"
    release = otp_release()
    assert release in commands, f"no terminal-2 line for OTP {release}"
    words = shlex.split(names(commands[release]))
    env = environment(home)
    while "=" in words[0] and not words[0].startswith("-"):
        key, _, value = words.pop(0).partition("=")
        env[key] = os.path.expandvars(value.replace("$PATH", env["PATH"]))
    return words, env, ROOT / "elixir_peer"


async def nc_session(lines: list[str], names: Names) -> None:
    """The README's nc transcript, typed into the line server."""
    command = shlex.split(names(lines[0][2:]))
    assert command[:2] == ["nc", "localhost"] and command[2] == str(names.port), command
    reader, writer = await asyncio.open_connection("127.0.0.1", names.port)
    try:
        for raw in lines[1:]:
            line = strip_annotation(names(raw))
            action = re.search(r"after `(.+)` from another client", raw)
            if not line and action:
                other_reader, other_writer = await asyncio.open_connection("127.0.0.1", names.port)
                other_writer.write(action.group(1).encode() + b"\r\n")
                assert await asyncio.wait_for(other_reader.readline(), 20) == b"OK\r\n"
                other_writer.close()
            elif not line:
                continue
            elif re.match(r"(CREATE|PUT|GET|DELETE|SUBSCRIBE)\b", line):
                writer.write(line.encode() + b"\r\n")
            else:
                got = (await asyncio.wait_for(reader.readline(), 20)).decode().rstrip("\r\n")
                assert got == line, f"after {raw!r}: the line server said {got!r}"
    finally:
        writer.close()


async def iex_block(iex: Iex, lines: list[str], names: Names) -> None:
    steps: list[tuple[str, list[str]]] = []
    for raw in lines:
        if raw.startswith("iex> "):
            steps.append((names(raw[5:]), []))
        else:
            assert steps, f"output before any iex> line: {raw!r}"
            steps[-1][1].append(normalize_ids(strip_annotation(names(raw))))
    for line, expected in steps:
        await iex.step(line, [l for l in expected if l])


def shell_session(lines: list[str], names: Names, home: Path) -> None:
    """The README's shell session, typed at a terminal."""
    argv = shlex.split(names(lines[0][2:]))
    shell = PtyProgram([sys.executable, *argv[1:]], cwd=str(ROOT), env=environment(home, TERM="dumb"))
    try:
        shell.read_until(r"(?m)^>>> $")
        steps: list[tuple[str, list[str]]] = []
        for raw in lines[1:]:
            if raw.startswith(">>> "):
                steps.append((names(raw[4:]), []))
            else:
                steps[-1][1].append(strip_annotation(names(raw)))
        for typed, expected in steps:
            since = shell.type(typed + "\n")
            screen = shell.read_until(re.escape(typed) + r"\n(?:.*\n)*?>>> ", 30, since)
            assert repl_answer(screen, typed) == [l for l in expected if l], screen
        shell.type("\x04")  # Ctrl-D stops the node
        assert shell.wait() == 0, shell.output
    finally:
        shell.close()


@pytest.mark.distributed
@pytest.mark.timeout(400)
def test_the_walkthrough_does_what_the_readme_shows(home: Path, elixir_peer_built: None) -> None:
    walkthrough = section("The seed chapter, with Python as foo")
    names = Names()

    async def main() -> None:
        # terminal 1
        terminal_1 = block_starting(walkthrough, "$ python -m pykv")
        foo, lines = await start_python_node(terminal_1[0][2:], names, home)
        iex = None
        try:
            check_startup(lines, terminal_1[1:], names)
            # terminal 2
            argv, env, cwd = terminal_2(walkthrough, names, home)
            iex = Iex(argv, cwd=str(cwd), env=env)
            await iex.start()
            # the rest, in the README's order: iex lines and the nc session
            for language, block in blocks(walkthrough):
                if language == "elixir" and block[0].startswith("iex> "):
                    await iex_block(iex, block, names)
                elif language == "console" and block[0].startswith("$ nc "):
                    await nc_session(block, names)
            # the shell section, against the same bar
            shell = block_starting(section("A shell on the node"), "$ python -m pykv")
            await asyncio.to_thread(shell_session, shell, names, home)
        finally:
            transcript = await iex.stop() if iex is not None else ""
            code, rest = await stop_with_ctrl_c(foo)
            print(f"--- iex ---\n{transcript}\n--- foo ---\n" + "\n".join(lines) + rest)
        assert code == 0, rest

    run(main(), timeout=360)


@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_the_python_tour_runs_as_printed(home: Path, cookie: str, tmp_path: Path, elixir_peer_built: None) -> None:
    api = section("Python API")
    code = [lines for lang, lines in blocks(api) if lang == "python"][0]
    printed = block_starting(api, "$ python client.py")
    names = Names()
    program = tmp_path / "client.py"
    program.write_text(names("\n".join(code)) + "\n")
    bar = BeamNode(names.nodes["bar"], cookie, kv_app=True, env={"HOME": str(home)}).start()

    async def wait_for_bar() -> None:
        from pykv import Node
        async with Node(unique("probe"), cookie) as probe:
            await wait_for_kv(probe, bar.name)

    try:
        run(wait_for_bar())
        result = subprocess.run([sys.executable, str(program)], cwd=tmp_path, env=environment(home),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
        seen = [normalize_ids(l) for l in result.stdout.splitlines()]
        assert seen == [normalize_ids(names(l)) for l in printed[1:]], result.stdout
    finally:
        bar.stop()
