"""experiments.allocator: malloc tuned for the step buffers, and the page faults it removes."""

import json
import os
import subprocess
import sys

import pytest

from experiments import allocator

# A jitted step whose 64 MiB output is freed after every call, as XLA:CPU's step buffers
# are, run as a binary is (`reexec_with_tuned_malloc` first) or not: the minor page faults
# per call of the calls after the first few, and the resident memory after 60 and after
# 100 calls.
_FAULTS = '''
import json, os, resource, sys
from experiments import allocator
if sys.argv[1] == 'reexec':
  allocator.reexec_with_tuned_malloc()
import jax, jax.numpy as jnp
def resident():
  with open('/proc/self/statm') as f:
    return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')
x = jnp.ones((16, 1024, 1024), jnp.float32)
f = jax.jit(lambda x: x * 2.0)
for _ in range(3):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  f(x).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
y, rss = x, []
for i in range(100):
  y = f(x)  # the last output stays alive while the next is allocated
  y.block_until_ready()
  if i + 1 in (60, 100):
    rss.append(resident())
print(json.dumps({'tunables': os.environ.get('GLIBC_TUNABLES'), 'faults': faults,
                  'rss': rss}))
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


@pytest.mark.skipif(allocator.tuned_malloc_environment({}) is None,
                    reason='no glibc 2.26+ on Linux')
def test_the_binaries_reuse_their_step_buffers_and_their_memory_levels_off():
  default, reexec = _faults('default'), _faults('reexec')
  assert default['tunables'] is None
  assert default['faults'] == pytest.approx(_PAGES, rel=0.2)  # every page, every call
  assert reexec['tunables'] == allocator.tunables()
  assert reexec['faults'] < _PAGES / 100
  at_60, at_100 = reexec['rss']
  assert at_100 - at_60 < 64 * 2**20  # kept, not piling up


@pytest.fixture
def linux_glibc(monkeypatch):
  monkeypatch.setattr(allocator.platform, 'system', lambda: 'Linux')
  monkeypatch.setattr(allocator.platform, 'libc_ver', lambda: ('glibc', '2.36'))
  monkeypatch.setattr(allocator, '_thp_mode', lambda: 'madvise')
  return monkeypatch


def test_the_tuned_malloc_is_asked_for_with_a_marker(linux_glibc):
  environ = allocator.tuned_malloc_environment({'PATH': '/bin'})
  assert environ == {'PATH': '/bin', 'GLIBC_TUNABLES': f'{allocator.KEEP}:glibc.malloc.hugetlb=1',
                     allocator.MARKER: '1'}
  assert allocator.environment_as_given(environ) == {'PATH': '/bin'}


@pytest.mark.parametrize('change', [
    {'libc': ('glibc', '2.34')}, {'libc': ('glibc', '2.26')},
    {'thp': 'always'}, {'thp': 'never'}, {'thp': None}])
def test_huge_pages_only_where_glibc_and_the_kernel_have_them(linux_glibc, change):
  if 'libc' in change:
    linux_glibc.setattr(allocator.platform, 'libc_ver', lambda: change['libc'])
  if 'thp' in change:
    linux_glibc.setattr(allocator, '_thp_mode', lambda: change['thp'])
  assert allocator.tuned_malloc_environment({})['GLIBC_TUNABLES'] == allocator.KEEP


@pytest.mark.parametrize('change', [
    {'environ': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}},  # the user's opt-out
    {'environ': {'GLIBC_TUNABLES': 'glibc.rtld.optional_static_tls=512'}},
    {'libc': ('glibc', '2.25')}, {'libc': ('', '')}, {'libc': ('glibc', '2')},
    {'system': 'Darwin'}])
def test_nothing_is_set_where_glibc_has_no_tunables_or_the_user_set_them(linux_glibc, change):
  if 'libc' in change:
    linux_glibc.setattr(allocator.platform, 'libc_ver', lambda: change['libc'])
  if 'system' in change:
    linux_glibc.setattr(allocator.platform, 'system', lambda: change['system'])
  assert allocator.tuned_malloc_environment(change.get('environ', {})) is None


def test_the_environment_as_given_keeps_the_user_s_own_tunables():
  environ = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1', 'HOME': '/root'}
  assert allocator.environment_as_given(environ) == environ


def test_reexec_replaces_the_process_with_the_same_command(linux_glibc):
  calls = []
  linux_glibc.setattr(allocator.os, 'execve', lambda *args: calls.append(args))
  linux_glibc.setattr(allocator.sys, 'orig_argv', ['python3', '-m', 'experiments.cifar',
                                                   '--steps=3'])
  linux_glibc.delenv('GLIBC_TUNABLES', raising=False)
  allocator.reexec_with_tuned_malloc()
  (path, argv, environ), = calls
  assert (path, argv) == (sys.executable, [sys.executable, '-m', 'experiments.cifar',
                                           '--steps=3'])
  assert environ['GLIBC_TUNABLES'] == allocator.tunables() and environ['HOME'] == os.environ[
      'HOME']
