"""XLA_FLAGS for the binaries that tests start in subprocesses."""

import os
import re

_COUNT = re.compile(r'--xla_force_host_platform_device_count=\d+')


def with_devices(count: int | None) -> str:
  """The tests' XLA_FLAGS (see conftest: -O0) with ``count`` fake CPU devices, or with
  JAX's default of one when ``count`` is None."""
  flags = _COUNT.sub('', os.environ.get('XLA_FLAGS', '')).split()
  if count is not None:
    flags.append(f'--xla_force_host_platform_device_count={count}')
  return ' '.join(flags)
