"""Test-wide setup: 8 fake CPU devices, so data-parallel code is tested without accelerators.

The flag must be set before JAX initialises its backends, hence at import of conftest.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  _flags += ' --xla_force_host_platform_device_count=8'
# The tests compile far more than they run: with XLA:CPU's backend at -O0 a tiny ResNet
# run compiles in 6.7 s instead of 11.4 s and runs 30% slower, with the same HLO and the
# same numbers (measured 2026-12-03). Subprocesses inherit it (see `tests.xla_flags`).
if '--xla_backend_optimization_level' not in _flags:
  _flags += ' --xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = _flags.strip()

# One compilation cache for the whole run, shared with the binaries' subprocesses (they
# inherit the environment): many tests train the same tiny programs, and a program compiled
# once (measured: a tiny run 12.7 s -> 2.2 s the second time) is read back, not recompiled.
# A fresh folder per run, so CI measures a cold start; removed at the end.
import shutil  # noqa: E402
import tempfile  # noqa: E402

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix='lrsched-tests-jax-cache-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
else:
  _CACHE = None
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '-1')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')


def pytest_sessionfinish(session, exitstatus):
  if _CACHE is not None:
    shutil.rmtree(_CACHE, ignore_errors=True)


# Property tests compile under jit: no per-example deadline, and a bounded example count
# so that the whole suite stays under 10 minutes on CI's 2 cores (HYPOTHESIS_PROFILE=thorough
# for 1000 examples a test).
from hypothesis import settings  # noqa: E402

settings.register_profile('default', deadline=None, max_examples=30, derandomize=True)
settings.register_profile('thorough', deadline=None, max_examples=1000)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'default'))
