"""python -m lrsched.plot: PNGs for the LR and momentum, the install hint, bad specs."""

import builtins
import subprocess
import sys

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


def test_plot_schedules_on_given_axes():
  matplotlib = pytest.importorskip('matplotlib')
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  _, ax = plt.subplots()
  plot.plot_schedules({'a': lrsched.cosine(0.1, 100), 'b': lrsched.constant(0.05)}, 120, ax)
  assert len(ax.get_lines()) == 2 and ax.get_legend() is not None
  plt.close('all')


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
