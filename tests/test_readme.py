"""The README's Python example runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_python_examples_run():
  text = (ROOT / 'README.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', text, flags=re.S)
  assert blocks, 'the README has no Python example'
  for block in blocks:
    assert len(block.strip().splitlines()) <= 12, 'keep the example to about ten lines'
    exec(compile(block, 'README.md', 'exec'), {})
