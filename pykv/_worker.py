"""`python -m pykv._worker RFD WFD`: a worker process of pykv.workers (a module of its own, so
that running it does not import pykv.workers twice)."""

import sys

from .workers import worker_main

worker_main(int(sys.argv[1]), int(sys.argv[2]))
