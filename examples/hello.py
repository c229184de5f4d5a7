"""The seed chapter's `Hello.world/0`, exported from a Python node.

    python examples/hello.py --sname foo
    iex --sname bar
    iex> :rpc.call(:"foo@HOST", Hello, :world, [])     # prints "hello world" in iex
    iex> Node.spawn_link(:"foo@HOST", Hello, :world, [])
"""

import asyncio
import sys

from pykv import Atom, Node
from pykv.kv import start_kv


async def main(name: str) -> None:
    async with Node(name) as node:
        @node.export("Hello")          # callable from the cluster as Hello.world/0
        def world() -> Atom:
            print("hello world")       # shows on the caller's console (its group leader)
            return Atom("ok")

        await start_kv(node)           # KV.Registry, KV.RouterTasks, KV.Router, port 4040
        print(f"{node.name.name} is up; Ctrl-C to stop", file=sys.stderr)
        await asyncio.Event().wait()


if __name__ == "__main__":
    args = sys.argv[1:]
    asyncio.run(main(args[args.index("--sname") + 1] if "--sname" in args else "foo"))
