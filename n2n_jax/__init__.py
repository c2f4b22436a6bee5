"""N2N learning (Ashok et al., ICLR 2018) in JAX/Flax: `n2n_jax.compress(teacher,
data)` finds a much smaller student by reinforcement learning and returns it
trained (see n2n_jax/api.py and docs/library.md). The package top loads
nothing heavy until `compress` is used; the modules (spec, zoo, models, data,
search, ...) are imported as usual: `from n2n_jax import spec`.
"""

_LAZY = {'compress': 'api', 'Compressed': 'api'}


def __getattr__(name):
  if name in _LAZY:
    import importlib  # pylint: disable=g-import-not-at-top

    return getattr(importlib.import_module(f'n2n_jax.{_LAZY[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = sorted(_LAZY)
