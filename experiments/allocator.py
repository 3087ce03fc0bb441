"""glibc's malloc tuned for XLA:CPU's step buffers: kept between steps, on huge pages.

XLA:CPU allocates the buffers of every execution with malloc and frees them when it ends.
By default glibc serves an allocation above 32 MiB (and one a thread's arena cannot fit in
its 64 MiB heaps) by a fresh ``mmap`` and returns it with ``munmap``, so the kernel faults
in and zeroes every page again at every step: a ResNet-20 training step at batch 128
faulted 73,000 4 KiB pages (285 MiB) and spent about as much CPU time in the kernel as in
its convolutions (WORKSPACE.md, issue 10). The binaries therefore run with

* ``glibc.malloc.arena_max=1``, ``glibc.malloc.mmap_max=0`` and a ``trim_threshold`` no heap
  reaches: every thread allocates from the one main heap, which never unmaps or trims, so
  the next step reuses the memory the last one freed and faults nothing (a ResNet-20 step
  at batch 128: 233 -> 186 ms on 2 cores, faults 375 -> 0 a step). The cost is memory: the
  process keeps its peak, as PyTorch's allocators do (ResNet-20 training with evaluations
  and checkpoints: 2.2 GiB resident against 1.1 GiB), and it levels off rather than grows
  (a 64 MiB output freed after each of 300 calls: flat after the first 50);
* ``glibc.malloc.hugetlb=1`` where transparent huge pages are in ``madvise`` mode (glibc
  2.35+): the heap on 2 MiB pages, so its first use faults 512 times less.

glibc reads its tunables once, as the process starts, so `reexec_with_tuned_malloc` starts
the binary again (``execve``: the same process id, arguments and environment) with
``GLIBC_TUNABLES`` set, first thing, on Linux with glibc 2.26 or later when
``GLIBC_TUNABLES`` is unset. Set ``GLIBC_TUNABLES`` yourself (to anything, e.g.
``glibc.malloc.arena_max=8``) to opt out. ``LRSCHED_MALLOC=1`` in the environment says the
binary set it (so that the benchmark's PyTorch reference runs with the environment you
gave). In your own Python (a notebook), start the interpreter with the same variable.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

KEEP = ('glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:'
        f'glibc.malloc.trim_threshold={2**62}')
"""One heap that never returns memory: the step's buffers are reused, not faulted in."""
HUGE_PAGES = 'glibc.malloc.hugetlb=1'
"""malloc's memory on transparent huge pages (glibc 2.35+, THP in ``madvise`` mode)."""
MARKER = 'LRSCHED_MALLOC'
"""Set to '1' beside ``GLIBC_TUNABLES`` when `reexec_with_tuned_malloc` set it."""
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _thp_mode() -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.find('[') + 1:text.find(']')] if '[' in text else None


def tunables() -> str | None:
  """The ``GLIBC_TUNABLES`` value for this machine, or None where glibc has no tunables."""
  if platform.system() != 'Linux':
    return None
  libc, version = platform.libc_ver()
  parts = version.split('.')
  if libc != 'glibc' or not all(p.isdigit() for p in parts[:2]) or len(parts) < 2:
    return None
  version = tuple(int(p) for p in parts[:2])
  if version < (2, 26):
    return None
  return f'{KEEP}:{HUGE_PAGES}' if version >= (2, 35) and _thp_mode() == 'madvise' else KEEP


def tuned_malloc_environment(environ: Mapping[str, str] = os.environ
                             ) -> dict[str, str] | None:
  """The environment to start the binary again with, or None where there is nothing to set
  (or the environment already sets glibc's tunables)."""
  value = None if 'GLIBC_TUNABLES' in environ else tunables()
  return None if value is None else {**environ, 'GLIBC_TUNABLES': value, MARKER: '1'}


def reexec_with_tuned_malloc() -> None:
  """Starts this binary again with malloc tuned (the module's docstring), or returns where
  there is nothing to set. Call it first thing under ``__main__``, before anything has run:
  the process is replaced."""
  environ = tuned_malloc_environment()
  if environ is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def environment_as_given(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """``environ`` without what `reexec_with_tuned_malloc` added: the environment the user
  started the binary with."""
  if environ.get(MARKER) != '1':
    return dict(environ)
  return {k: v for k, v in environ.items() if k not in (MARKER, 'GLIBC_TUNABLES')}
