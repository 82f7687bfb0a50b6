"""Host memory for a process that runs the model step after step: glibc's malloc told to keep what a
step frees.

A training step allocates and frees the same large buffers every step: activations, GEMM outputs,
gradients, MiBs to tens of MiBs each; an evaluation batch does the same with its activations. Under
glibc's defaults a buffer above the mmap threshold (128 KiB at start, raised as mmapped blocks are
freed, up to 32 MiB) comes fresh from the kernel and goes back to it when freed, and the heap's top
is given back above twice that threshold, so the next step touches new pages and page-faults each of
them in (~25 ms per 64 MiB on the build machine). Measured there (AMD EPYC, 2 vCPU, torch 2.13 CPU,
one process per setting, median step after 2): the default model 371 ms under glibc's defaults
against 358 ms with the settings below (80 steps), its resident memory 673 against 712 MB; the
mid-size model of ``bench/train_throughput.py --shape mid`` 4.70 against 4.46 s (20 steps), 3.25
against 3.77 GB: the memory stays at the step's peak plus what glibc cannot reuse (on glibc 2.36
here a freed block of one aligned allocation does not serve the next aligned one of its size, glibc
bug 14581, so the heap settles a few buffers above the peak instead of at it). The evaluate stage on
the default pipeline's outputs (three processes each way, alternating, 2026-11-30): 30.5-32.5 s
under glibc's defaults against 29.4-30.9 s with the settings (imports included), 1.29-1.39 M minor
page faults against 0.22-0.30 M, peak resident memory 0.85-0.87 against 0.98-1.29 GiB.

:func:`keep_freed_host_memory` raises the mmap threshold to 1 GiB and the trim threshold to 2 GiB,
so a freed buffer stays in the process and the next step reuses it without a fault, as PyTorch's
CUDA caching allocator keeps device memory and its CPU launcher (``torch.backends.xeon.run_cpu``)
preloads tcmalloc or jemalloc, when it finds one, by default. It is process-wide, so the train and
evaluate stages' entry points call it (:func:`stages.common.run_main`; in every rank of a training:
each process runs that entry point), never the library functions a user's own program may call. A
process whose allocator the user set (``GLIBC_TUNABLES`` with ``glibc.malloc`` keys, ``MALLOC_*_``
variables, or another allocator in ``LD_PRELOAD``) keeps it, as does any C library other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # blocks up to this size come from the heap, reused when freed
TRIM_THRESHOLD = 2**31 - 1  # free bytes at the heap's top kept (mallopt takes an int)
OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")


def keep_freed_host_memory() -> str:
    """Set glibc's malloc to keep freed memory for reuse (see the module docstring) unless the
    user chose an allocator or its settings; returns the line to log, saying which happened."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "host memory: the C library's allocator as it is (not glibc)"
    user_choice = _user_allocator_choice(os.environ)
    if user_choice is not None:
        return f"host memory: the allocator as {user_choice} sets it"
    libc = ctypes.CDLL(None)  # this process's own C library
    if not (
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
        and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    ):
        return "host memory: glibc's malloc refused the settings; its defaults apply"
    return (
        "host memory: glibc's malloc keeps freed blocks for reuse (mmap threshold 1 GiB, trim "
        "threshold 2 GiB), so steps do not page-fault their buffers in again"
    )


def _user_allocator_choice(environ: Mapping[str, str]) -> str | None:
    """The environment variable through which the user chose the allocator or its settings."""
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if any(name in environ.get("LD_PRELOAD", "") for name in OTHER_ALLOCATORS):
        return "LD_PRELOAD"
    named = sorted(k for k in environ if k.startswith("MALLOC_") and k.endswith("_"))
    return named[0] if named else None
