"""Test-wide setup: 8 fake CPU devices, so data-parallel code is tested without accelerators.

The flag must be set before JAX initialises its backends, hence at import of conftest.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()

# Property tests compile under jit: no per-example deadline, and a bounded example count
# so that the whole suite stays well under 15 minutes on CI's 2 cores.
from hypothesis import settings  # noqa: E402

settings.register_profile('default', deadline=None, max_examples=40, derandomize=True)
settings.register_profile('thorough', deadline=None, max_examples=1000)
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'default'))
