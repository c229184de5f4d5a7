"""The seed chapter's `Hello.world/0`, served by the standard node beside the KV app.

    python -m pykv --sname foo --load examples/hello.py      # with any other flag (--route ...)
    python examples/hello.py --sname foo                     # the same, run on its own

    iex --sname bar
    iex> :rpc.call(:"foo@HOST", Hello, :world, [])           # prints "hello world" in iex
    iex> Node.spawn_link(:"foo@HOST", Hello, :world, [])
"""

from pykv import Atom, export


@export("Hello")                   # Hello.world/0 for :rpc, :erpc, Node.spawn and tasks
def world() -> Atom:
    print("hello world")           # shows on the caller's console (its group leader)
    return Atom("ok")


if __name__ == "__main__":
    import sys

    from pykv.cli import main

    main(["--load", __file__, *sys.argv[1:]], prog="python examples/hello.py")
