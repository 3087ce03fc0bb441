"""Test-wide setup: 8 fake CPU devices, so data-parallel code is tested without accelerators.

The flag must be set before JAX initialises its backends, hence at import of conftest.
"""

import os

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
_flags = os.environ.get('XLA_FLAGS', '')
if '--xla_force_host_platform_device_count' not in _flags:
  os.environ['XLA_FLAGS'] = (_flags + ' --xla_force_host_platform_device_count=8').strip()
