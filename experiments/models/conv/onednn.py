"""oneDNN's convolutions and batch norm inside XLA on CPU (``--conv=onednn``).

XLA:CPU runs a ResNet's convolutions through Eigen, 1.2-14x slower than oneDNN on the same
cores, the weight gradient worst (WORKSPACE.md, issue 10). This backend runs oneDNN's kernels
as XLA FFI custom calls in the compiled step itself: no host callback, no copy (oneDNN reads
JAX's NHWC buffers in place and reorders only the small HWIO kernel into its own layout).

oneDNN comes from PyPI (``pip install 'lrsched[onednn]'``: ``onednn-devel-cpu-gomp``, oneDNN
3.2 built with GNU OpenMP, and its headers). The handlers (``onednn.cc``) are compiled with
the system's C++ compiler (``$CXX``, else ``g++``) on first use, against the headers of the
jaxlib in use, into ``cache_dir()/onednn/<hash of the source, jaxlib and oneDNN>``, once
per machine (a few seconds; an atomic rename, so concurrent processes are safe). `unavailable`
says in one line what is missing. It loads with ``OMP_WAIT_POLICY=ACTIVE`` and
``GOMP_SPINCOUNT=10000000`` unless the environment sets either (oneDNN's threads spin
between the step's calls, and sleep when the process idles).
Convolutions the handlers do not cover (dilation, groups, layouts other than NHWC/HWIO,
mixed dtypes) run as XLA's. The results agree with XLA's to float rounding (the forward
bit for bit in float32 on the machines measured so far; the gradients to about 1e-6
relative).

`batch_norm` is ghost batch norm's training pass (`layers.GhostBatchNorm` with ``onednn``):
one oneDNN batch-norm call per group, forward with the ReLU fused and backward, float32. XLA
spends more of a CPU step on batch norm's reductions than on anything but the convolutions;
oneDNN's pass is 1.1-1.7x faster per step (WORKSPACE.md). The residual add stays XLA's:
oneDNN 3.2 has no fused add-ReLU for training on CPU.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from experiments.models import vma

SOURCE = Path(__file__).with_name('onednn.cc')
RUNTIME, HEADERS = 'onednn-cpu-gomp', 'onednn-devel-cpu-gomp'
_INSTALL = "pip install 'lrsched[onednn]'"
_NHWC = lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
_TYPES = {jnp.dtype(jnp.float32): 'f32', jnp.dtype(jnp.bfloat16): 'bf16'}
_OPS = ('forward', 'backward_data', 'backward_weights')
SPIN_COUNT = '10000000'
"""libgomp's spins before an idle thread sleeps (its default 300,000: about 8 ms on the
2026 EPYC; 10M about 0.3 s, measured as CPU time after the work)."""


class Unavailable(RuntimeError):
  """oneDNN or a C++ compiler is missing, or the handlers failed to build (one line)."""


def unavailable() -> str | None:
  """Why the oneDNN convolutions cannot run here (one line naming the fix), or None."""
  try:
    _register()
  except Unavailable as e:
    return str(e)
  return None


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` by oneDNN where it covers the convolution, else XLA's."""
  xla = functools.partial(
      lax.conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
      batch_group_count=batch_group_count, precision=precision,
      preferred_element_type=preferred_element_type)
  covered = (lhs.ndim == 4
             and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
             and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
             and feature_group_count == 1 and batch_group_count == 1
             and lhs.dtype == rhs.dtype and lhs.dtype in _TYPES
             and preferred_element_type in (None, lhs.dtype))
  if not covered:
    return xla(lhs, rhs)
  _register()
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  lhs, rhs = vma.match(lhs, rhs)
  return _conv(lhs, rhs, strides, pads)


def _out_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def _call(op: str, shape, a, b, strides, pads):
  """The handler ``op`` on operands ``a``, ``b``, its result of ``shape`` in their dtype."""
  name = f'lrsched_conv_{op}_{_TYPES[jnp.dtype(a.dtype)]}'
  out = jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(shape, a.dtype),
                         vmap_method='sequential')(
      a, b, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
      pad_top=np.int64(pads[0][0]), pad_left=np.int64(pads[1][0]))
  return vma.like(out, a, b)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x, w, strides, pads):
  n, h, wd, _ = x.shape
  kh, kw, _, o = w.shape
  shape = (n, _out_size(h, kh, strides[0], pads[0]), _out_size(wd, kw, strides[1], pads[1]), o)
  return _call('forward', shape, x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, g):
  x, w = residuals
  g = g.astype(x.dtype)
  return (_call('backward_data', x.shape, g, w, strides, pads),
          _call('backward_weights', w.shape, x, g, strides, pads))


_conv.defvjp(_conv_fwd, _conv_bwd)


def batch_norm(x: jax.Array, scale: jax.Array, shift: jax.Array, group: int, epsilon: float,
               relu: bool = False) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ghost batch norm in training by oneDNN, with its ReLU fused if ``relu``.

  ``x``: (batch, h, w, c) float32, ``batch`` a multiple of ``group``; ``scale`` and ``shift``:
  (c,) float32. Returns ``bn(x)`` (or ``relu(bn(x))``), each group of ``group`` consecutive
  examples normalised with its own mean and biased variance, and those statistics,
  (batch / group, c) each, not differentiable (they feed the running averages). The
  gradient is batch norm's, by oneDNN; the ReLU's mask is applied to it in XLA, which fuses
  it with the sum of the incoming gradients.
  """
  _register()
  y, mean, var = _batch_norm(*vma.match(x, scale, shift), group, float(epsilon), relu)
  return y, lax.stop_gradient(mean), lax.stop_gradient(var)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _batch_norm(x, scale, shift, group, epsilon, relu):
  stats = jax.ShapeDtypeStruct((x.shape[0] // group, x.shape[-1]), jnp.float32)
  outs = jax.ffi.ffi_call(
      'lrsched_norm_forward', (jax.ShapeDtypeStruct(x.shape, x.dtype), stats, stats),
      vmap_method='sequential')(x, scale, shift, group=np.int64(group),
                                epsilon=np.float32(epsilon), relu=np.int64(relu))
  return tuple(vma.like(out, x, scale) for out in outs)


def _batch_norm_fwd(x, scale, shift, group, epsilon, relu):
  y, mean, var = _batch_norm(x, scale, shift, group, epsilon, relu)
  return (y, mean, var), (x, scale, mean, var, y if relu else None)


def _batch_norm_bwd(group, epsilon, relu, saved, cotangents):
  x, scale, mean, var, y = saved
  dy = cotangents[0]  # the statistics' cotangents are zeros: `batch_norm` stops them
  if relu:
    dy = jnp.where(y > 0, dy, jnp.zeros_like(dy))
  per_group = jax.ShapeDtypeStruct(mean.shape, jnp.float32)
  dx, dscale, dshift = jax.ffi.ffi_call(
      'lrsched_norm_backward', (jax.ShapeDtypeStruct(x.shape, x.dtype), per_group, per_group),
      vmap_method='sequential')(x, dy, mean, var, scale, group=np.int64(group),
                                epsilon=np.float32(epsilon))
  dx, dscale, dshift = (vma.like(out, x, dy) for out in (dx, dscale, dshift))
  return dx, jnp.sum(dscale, axis=0), jnp.sum(dshift, axis=0)


_batch_norm.defvjp(_batch_norm_fwd, _batch_norm_bwd)


def _installed_file(distribution: str, suffix: str) -> Path:
  try:
    files = importlib.metadata.files(distribution) or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f'--conv=onednn needs oneDNN: {_INSTALL} (or --conv=xla)') from None
  for f in files:
    if str(f).replace(os.sep, '/').endswith(suffix):
      return Path(f.locate()).resolve()
  raise Unavailable(f'{distribution} has no {suffix}: reinstall it ({_INSTALL})')


@functools.cache
def _register() -> None:
  """Builds (once per machine) and loads the handlers and registers them with XLA."""
  path = _build()
  # oneDNN's OpenMP threads keep spinning between the step's convolutions rather than sleep
  # after libgomp's default ~8 ms and wait to be woken: OMP_WAIT_POLICY=ACTIVE made steps
  # 4-6% faster (WORKSPACE.md), but alone it spins a core for the life of the process,
  # idle or not; with a bounded spin count (about 0.3 s on the CPUs measured) the threads
  # outlast every gap in a step and then sleep. Only where you set neither; read once, as
  # libgomp loads (here, unless something loaded it before), and only for the load:
  # processes started later (the benchmark's PyTorch reference) get the environment as
  # it was.
  ours = {} if {'OMP_WAIT_POLICY', 'GOMP_SPINCOUNT'} & os.environ.keys() else {
      'OMP_WAIT_POLICY': 'ACTIVE', 'GOMP_SPINCOUNT': SPIN_COUNT}
  os.environ.update(ours)
  try:
    library = ctypes.CDLL(str(path))
  finally:
    for name in ours:
      del os.environ[name]
  names = [f'lrsched_conv_{op}_{suffix}' for op in _OPS for suffix in _TYPES.values()]
  for name in [*names, 'lrsched_norm_forward', 'lrsched_norm_backward']:
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)),
                                platform='cpu')


def _build() -> Path:
  """The compiled handlers, from the cache or compiled now (atomically)."""
  from experiments.data import cache_dir

  dnnl = _installed_file(RUNTIME, '/libdnnl.so.3')
  header = _installed_file(HEADERS, 'include/oneapi/dnnl/dnnl.hpp')
  compiler = shutil.which(os.environ.get('CXX', 'g++'))
  if compiler is None:
    raise Unavailable('--conv=onednn compiles its kernels with a C++ compiler: install g++ '
                      '(or set $CXX), or use --conv=xla')
  key = hashlib.sha256()
  for part in (SOURCE.read_bytes(), jax.__version__.encode(), importlib.metadata.version(
      'jaxlib').encode(), importlib.metadata.version(RUNTIME).encode(), compiler.encode()):
    key.update(part + b'\0')
  target = cache_dir() / 'onednn' / key.hexdigest()[:16] / 'liblrsched_onednn.so'
  if target.is_file():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  fd, partial = tempfile.mkstemp(suffix='.so.partial', dir=target.parent)
  os.close(fd)
  command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w',
             f'-I{header.parents[2]}', f'-I{jax.ffi.include_dir()}', str(SOURCE),
             f'-L{dnnl.parent}', '-l:libdnnl.so.3', f'-Wl,-rpath,{dnnl.parent}',
             '-Wl,--no-undefined', '-o', partial]
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode:
      lines = result.stderr.strip().splitlines() or ['no output']
      first = next((line for line in lines if 'error' in line), lines[-1])
      raise Unavailable(f'compiling the oneDNN convolutions failed ({first.strip()}); use '
                        '--conv=xla')
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.unlink(partial)
  return target
