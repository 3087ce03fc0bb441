"""experiments.allocator: huge pages for malloc, and the page faults they remove."""

import json
import os
import subprocess
import sys

import pytest

from experiments import allocator

# A jitted step whose 64 MiB output is freed after every call, as XLA:CPU's step buffers
# are: the minor page faults of the calls after the first, per call, run as a binary is
# (`reexec_with_huge_pages` first) or not.
_FAULTS = '''
import json, os, resource, sys
from experiments import allocator
if sys.argv[1] == 'reexec':
  allocator.reexec_with_huge_pages()
import jax, jax.numpy as jnp
x = jnp.ones((16, 1024, 1024), jnp.float32)
f = jax.jit(lambda x: x * 2.0)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({'tunables': os.environ.get('GLIBC_TUNABLES'), 'faults': faults}))
'''
_PAGES = 64 * 2**20 // 4096


def _faults(mode: str) -> dict:
  env = allocator.environment_as_given()
  env.pop('GLIBC_TUNABLES', None)
  env.pop('XLA_FLAGS', None)  # one device
  env['JAX_PLATFORMS'] = 'cpu'
  run = subprocess.run([sys.executable, '-c', _FAULTS, mode], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
  return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(allocator.huge_pages_environment({}) is None,
                    reason='no glibc 2.35+ with transparent huge pages in madvise mode')
def test_the_binaries_step_buffers_fault_in_huge_pages():
  default, reexec = _faults('default'), _faults('reexec')
  assert default == {'tunables': None, 'faults': pytest.approx(_PAGES, rel=0.2)}
  assert reexec['tunables'] == allocator.TUNABLE
  assert reexec['faults'] < _PAGES / 10  # mostly 2 MiB pages (where the kernel has them)


@pytest.fixture
def linux_glibc(monkeypatch):
  monkeypatch.setattr(allocator.platform, 'system', lambda: 'Linux')
  monkeypatch.setattr(allocator.platform, 'libc_ver', lambda: ('glibc', '2.36'))
  monkeypatch.setattr(allocator, '_thp_mode', lambda: 'madvise')
  return monkeypatch


def test_huge_pages_are_asked_for_with_a_marker(linux_glibc):
  environ = allocator.huge_pages_environment({'PATH': '/bin'})
  assert environ == {'PATH': '/bin', 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1',
                     allocator.MARKER: '1'}
  assert allocator.environment_as_given(environ) == {'PATH': '/bin'}


@pytest.mark.parametrize('change', [
    {'environ': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}},  # the user's opt-out
    {'environ': {'GLIBC_TUNABLES': 'glibc.rtld.optional_static_tls=512'}},
    {'libc': ('glibc', '2.34')}, {'libc': ('', '')}, {'libc': ('glibc', '2')}, {'system': 'Darwin'},
    {'thp': 'always'}, {'thp': 'never'}, {'thp': None}])
def test_huge_pages_are_not_asked_for_where_they_would_not_help(linux_glibc, change):
  if 'libc' in change:
    linux_glibc.setattr(allocator.platform, 'libc_ver', lambda: change['libc'])
  if 'system' in change:
    linux_glibc.setattr(allocator.platform, 'system', lambda: change['system'])
  if 'thp' in change:
    linux_glibc.setattr(allocator, '_thp_mode', lambda: change['thp'])
  assert allocator.huge_pages_environment(change.get('environ', {})) is None


def test_the_environment_as_given_keeps_the_user_s_own_tunables():
  environ = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', 'HOME': '/root'}
  assert allocator.environment_as_given(environ) == environ


def test_reexec_replaces_the_process_with_the_same_command(linux_glibc):
  calls = []
  linux_glibc.setattr(allocator.os, 'execve', lambda *args: calls.append(args))
  linux_glibc.setattr(allocator.sys, 'orig_argv', ['python3', '-m', 'experiments.cifar',
                                                   '--steps=3'])
  linux_glibc.delenv('GLIBC_TUNABLES', raising=False)
  allocator.reexec_with_huge_pages()
  (path, argv, environ), = calls
  assert (path, argv) == (sys.executable, [sys.executable, '-m', 'experiments.cifar',
                                           '--steps=3'])
  assert environ['GLIBC_TUNABLES'] == allocator.TUNABLE and environ['HOME'] == os.environ[
      'HOME']
