"""``python -m experiments.benchmark``: see the package's docstring."""

from absl import app

from experiments.benchmark.runner import main
from experiments.benchmark.settings import define_flags

define_flags()
app.run(main)
