"""The fast tier (`pytest -m "not slow"`) keeps a test for every module of the
package: some test file that imports the module has a test not marked slow."""

import ast

from conftest import ROOT

PACKAGE = ROOT / 'n2n_jax'


def _imported_modules(tree) -> set:
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module == 'n2n_jax':
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and (node.module or '').startswith('n2n_jax.'):
      names.add(node.module.split('.')[1])
    elif isinstance(node, ast.Import):
      names.update(a.name.split('.')[1] for a in node.names if a.name.startswith('n2n_jax.'))
  return names


def _is_slow(expression) -> bool:
  """Whether a decorator or pytestmark value is (or lists) pytest.mark.slow."""
  return any(isinstance(n, ast.Attribute) and n.attr == 'slow' for n in ast.walk(expression))


def _fast_test_count(tree) -> int:
  for node in tree.body:
    if (
      isinstance(node, ast.Assign)
      and any(getattr(t, 'id', '') == 'pytestmark' for t in node.targets)
      and _is_slow(node.value)
    ):
      return 0
  return sum(
    1
    for node in tree.body
    if isinstance(node, ast.FunctionDef)
    and node.name.startswith('test_')
    and not any(_is_slow(d) for d in node.decorator_list)
  )


def test_every_module_has_a_fast_test():
  modules = {p.stem for p in PACKAGE.glob('*.py') if p.stem != '__init__'}
  covered = set()
  for path in (ROOT / 'tests').glob('test_*.py'):
    tree = ast.parse(path.read_text())
    if _fast_test_count(tree):
      covered |= _imported_modules(tree)
  assert modules - covered == set(), 'modules with no test in the fast tier'


def test_the_check_sees_slow_marks():
  slow = ast.parse('import pytest\npytestmark = pytest.mark.slow\ndef test_a(): pass\n')
  marked = ast.parse('@pytest.mark.slow\ndef test_a(): pass\ndef test_b(): pass\n')
  assert _fast_test_count(slow) == 0 and _fast_test_count(marked) == 1
  assert _imported_modules(
    ast.parse('from n2n_jax import spec as S, zoo\nimport n2n_jax.data\n')
  ) == {'spec', 'zoo', 'data'}
