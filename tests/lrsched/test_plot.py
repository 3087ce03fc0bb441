"""python -m lrsched.plot: PNGs for the LR and momentum, the install hint, bad specs."""

import builtins
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import lrsched
from lrsched import plot

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _assert_png(path):
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE and len(data) > 2000


def test_lr_alone(tmp_path, capsys):
  out = tmp_path / 'lr.png'
  assert plot.main(['cyclic(base_lr=0.1, max_lr=3, step_size_up=50)', '--steps', '300',
                    '-o', str(out)]) == 0
  _assert_png(out)
  printed = capsys.readouterr().out
  assert 'wrote' in printed and '50' in printed  # describe()'s table of phases


def test_lr_and_momentum_with_run_length_filled_in(tmp_path):
  out = tmp_path / 'both.png'
  assert plot.main(['1cycle(max_lr=0.8)', '--steps', '200', '--momentum', 'one_cycle_momentum',
                    '--log', '-o', str(out)]) == 0
  _assert_png(out)


def test_momentum_auto_is_the_partner_of_the_lr(tmp_path, capsys):
  out = tmp_path / 'auto.png'
  assert plot.main(['clr(0.1, 1.0, 25)', '--steps', '100', '--momentum', 'auto',
                    '-o', str(out)]) == 0
  _assert_png(out)
  assert 'cyclic_momentum(base_momentum=0.85, max_momentum=0.95, step_size_up=25' in (
      capsys.readouterr().out)
  with pytest.raises(SystemExit) as info:
    plot.main(['cosine(0.1)', '--steps', '100', '--momentum', 'auto', '-o', str(out)])
  assert info.value.code == 2
  assert 'bad --momentum: momentum_for: no cyclical momentum' in capsys.readouterr().err


def test_plot_schedules_on_given_axes():
  matplotlib = pytest.importorskip('matplotlib')
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  _, ax = plt.subplots()
  schedules = {'a': lrsched.cosine(0.1, 100), 'b': lrsched.constant(0.05),
               # An Optax schedule that takes scalar steps only.
               'c': optax.piecewise_constant_schedule(0.1, {50: 0.5})}
  assert plot.plot_schedules(schedules, 120, ax) is ax
  lines = ax.get_lines()
  assert [line.get_label() for line in lines] == ['a', 'b', 'c']
  np.testing.assert_allclose(lines[0].get_ydata(), lrsched.cosine(0.1, 100)(jnp.arange(120)))
  np.testing.assert_allclose(lines[2].get_ydata(), [0.1] * 50 + [0.05] * 70)
  assert ax.get_legend() is not None
  # A sweep over a hyper-parameter draws one line per value; no axes: a new figure.
  ax = plot.plot_schedules(lrsched.cosine(jnp.array([0.1, 0.2, 0.3]), 10), 10, log=True)
  assert len(ax.get_lines()) == 3 and ax.get_yscale() == 'log'
  plt.close('all')


def test_help_and_bad_options(capsys):
  with pytest.raises(SystemExit) as info:
    plot.main(['--help'])
  assert info.value.code == 0
  assert '--momentum SPEC' in capsys.readouterr().out
  for argv in (['constant(0.1)', '--steps', '0', '-o', 'x.png'],
               ['constant(0.1)', '-o', 'x.png'],
               ['constant(0.1)', '--steps', '10', '-o', 'x.png', '--momentum', 'fixed(']):
    with pytest.raises(SystemExit) as info:
      plot.main(argv)
    assert info.value.code == 2


def test_without_matplotlib_prints_the_install_hint(tmp_path, monkeypatch, capsys):
  real_import = builtins.__import__

  def no_matplotlib(name, *args, **kwargs):
    if name == 'matplotlib' or name.startswith('matplotlib.'):
      raise ImportError('No module named matplotlib')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_matplotlib)
  assert plot.main(['constant(0.1)', '--steps', '10', '-o', str(tmp_path / 'x.png')]) == 1
  assert "pip install 'lrsched[plot]'" in capsys.readouterr().err
  with pytest.raises(ImportError, match=r"lrsched\[plot\]"):
    plot.plot_schedules(lrsched.constant(0.1), 10)


def test_bad_spec_exits_2_without_a_traceback(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'lrsched.plot', 'cyclic(base_lr=0.1,,)',
                           '--steps', '10', '-o', str(tmp_path / 'x.png')],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert 'bad SPEC' in result.stderr and '^' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'x.png').exists()
