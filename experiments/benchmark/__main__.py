"""``python -m experiments.benchmark``: see the package's docstring."""

from absl import app

from experiments import allocator
from experiments.benchmark.runner import main
from experiments.benchmark.settings import define_flags

allocator.reexec_with_tuned_malloc()  # first: it starts the process again
define_flags()
app.run(main)
