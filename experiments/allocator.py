"""Transparent huge pages for the host memory of the binaries: XLA:CPU's step buffers.

XLA:CPU allocates the buffers of every execution with malloc and frees them when it ends.
glibc serves an allocation above 32 MiB (and one a thread's arena cannot fit in its 64 MiB
heaps) by a fresh ``mmap`` and returns it with ``munmap``, so the kernel faults in and
zeroes every page again at every step, 4 KiB at a time: a ResNet-20 training step at batch
128 faulted 73,000 pages (285 MiB) and spent about as much CPU time in the kernel as in
its convolutions (WORKSPACE.md, issue 10). glibc's ``glibc.malloc.hugetlb=1`` tunable
(glibc 2.35+) asks for transparent huge pages on that memory (``madvise``): 2 MiB a fault,
560 a step. Allocation itself is unchanged: no memory is kept, nothing can pile up.
(Keeping freed memory instead, with ``mallopt`` -- one arena, no ``mmap``, no trimming --
removed the faults too, but an aligned allocation then never fitted the hole its
predecessor left, and the heap grew by a whole output at every call: measured, not kept.)

glibc reads its tunables once, as the process starts, so `reexec_with_huge_pages` starts
the binary again (``execve``: the same process id, arguments and environment) with
``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, first thing, where it helps: Linux with glibc
2.35 or later, transparent huge pages in ``madvise`` mode (with ``always`` the kernel
already uses them, with ``never`` it cannot), and ``GLIBC_TUNABLES`` unset. Set
``GLIBC_TUNABLES`` yourself (``glibc.malloc.hugetlb=0`` for glibc's default) to opt out.
``LRSCHED_HUGE_PAGES=1`` in the environment says the binary set it (so that the
benchmark's PyTorch reference runs with the environment you gave).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = 'glibc.malloc.hugetlb=1'
MARKER = 'LRSCHED_HUGE_PAGES'
"""Set to '1' beside ``GLIBC_TUNABLES`` when `reexec_with_huge_pages` set it."""
THP_MODE = '/sys/kernel/mm/transparent_hugepage/enabled'


def _thp_mode() -> str | None:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'), or None."""
  try:
    with open(THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  return text[text.find('[') + 1:text.find(']')] if '[' in text else None


def huge_pages_environment(environ: Mapping[str, str] = os.environ) -> dict[str, str] | None:
  """The environment to start the binary again with, or None where that would not help (or
  the environment already sets glibc's tunables)."""
  if 'GLIBC_TUNABLES' in environ or platform.system() != 'Linux':
    return None
  libc, version = platform.libc_ver()
  parts = version.split('.')
  if libc != 'glibc' or not all(p.isdigit() for p in parts[:2]) or tuple(
      int(p) for p in parts[:2]) < (2, 35):
    return None
  if _thp_mode() != 'madvise':
    return None
  return {**environ, 'GLIBC_TUNABLES': TUNABLE, MARKER: '1'}


def reexec_with_huge_pages() -> None:
  """Starts this binary again with huge pages for malloc (the module's docstring), or
  returns where that would not help. Call it first thing under ``__main__``, before
  anything has run: the process is replaced."""
  environ = huge_pages_environment()
  if environ is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)


def environment_as_given(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
  """``environ`` without what `reexec_with_huge_pages` added: the environment the user
  started the binary with."""
  if environ.get(MARKER) != '1':
    return dict(environ)
  return {k: v for k, v in environ.items() if k not in (MARKER, 'GLIBC_TUNABLES')}
