"""The gRPC gateway: platform preprocessing, migration, ranking, metrics."""

import os

# OpenBLAS's worker threads busy-wait 2^28 cycles (~0.1 s) after every multi-threaded call
# before they sleep. Recommend scores a catalogue every few milliseconds, so with the default
# the idle worker never sleeps: a whole core spins, taken from the event loop, Triton and the
# clients on the same machine. 2^4 cycles (OpenBLAS's minimum) makes it sleep at once. It is
# read when NumPy loads OpenBLAS, so it is set here, before anything in the gateway imports
# NumPy; an OPENBLAS_THREAD_TIMEOUT already in the environment wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
