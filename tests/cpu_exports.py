"""Module-level functions that tests/test_workers.py exports with `workers=True`: a worker
process imports them by name, so they live in a module of their own."""

import os
import time


def burn(ms):
    """Spend `ms` milliseconds of CPU; say which process did it."""
    end = time.process_time() + ms / 1000
    while time.process_time() < end:
        pass
    return os.getpid()


def echo(term):
    return term


def fail(message):
    raise ValueError(message.decode())


def die(status):
    os._exit(status)
