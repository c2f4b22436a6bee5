"""Compiled student programs on disk, so that a new process (a re-run, a
resumed search, a second search on the same teacher) starts an architecture it
has met before without tracing, lowering or compiling anything.

JAX's persistent compilation cache already skips XLA's compile on a re-run,
but it finds its entry by hashing the lowered program, so every new process
still traces and lowers each student's train step and forward pass first:
about 1.5 s of the 1.9-3.1 s a known architecture took to come up again
(docs/performance.md). This store instead keys a student's serialized
executables (train step, forward pass, initial optimiser state) and its
variable shapes by what determines them: the spec, the distillation settings,
the data shapes, the device, XLA_FLAGS, and the versions of JAX and of this
package's own source. Loading an entry is one file read and one executable
deserialisation per program.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import pickle
import tempfile
import threading
import zlib

import jax
import jaxlib
from jax.experimental import serialize_executable

# Bumped when an entry's layout changes; entries of other layouts are ignored.
FORMAT = 2
SUBDIR = 'n2n_programs'

# An executable JAX took from its persistent cache serializes incompletely
# (measured with JAX 0.10.2 on the CPU: the payload lacks some kernels, and
# loading it in another process fails at its first call with "NOT_FOUND:
# Function ... not found"). Only programs really compiled may be saved, so
# JAX's cache hits are counted per thread: JAX records the event in the
# thread that compiles.
_CACHE_HIT_EVENT = '/jax/compilation_cache/cache_hits'
_hits = threading.local()


def _count_cache_hit(event: str, **kwargs) -> None:
  del kwargs
  if event == _CACHE_HIT_EVENT:
    _hits.count = getattr(_hits, 'count', 0) + 1


jax.monitoring.register_event_listener(_count_cache_hit)


@contextlib.contextmanager
def persistent_cache_hits():
  """Yields a function giving the number of programs this thread has taken
  from JAX's persistent cache since the block began."""
  start = getattr(_hits, 'count', 0)
  yield lambda: getattr(_hits, 'count', 0) - start


@functools.lru_cache(maxsize=1)
def source_version() -> str:
  """A digest of this package's Python source: a program built by other code
  (a changed model, loss or optimiser) must not be loaded in its place."""
  package = os.path.dirname(os.path.abspath(__file__))
  digest = hashlib.sha256()
  for name in sorted(os.listdir(package)):
    if name.endswith('.py'):
      with open(os.path.join(package, name), 'rb') as f:
        digest.update(name.encode() + b'\0' + f.read())
  return digest.hexdigest()


def for_cache_dir(cache_dir: str) -> 'ProgramStore | None':
  """The store that lives beside JAX's persistent cache in `cache_dir`
  (runtime.compilation_cache_dir); None when that cache is off ('')."""
  return ProgramStore(os.path.join(cache_dir, SUBDIR)) if cache_dir else None


class ProgramStore:
  """Entries are zlib-compressed pickles of {'programs': {name: (executable,
  in tree, out tree)}, 'extras': {...}} in `directory`, one file per key
  (compressing makes them ~5x smaller, 0.33 MB instead of 1.6 MB for a
  VGG-13 student at half width, for ~10-20 ms each way). A missing,
  unreadable or stale entry is a miss, never an error: the caller compiles and
  saves again."""

  def __init__(self, directory: str):
    self.directory = directory

  def key(self, device, *parts) -> str:
    """The entry name for programs determined by `parts` (reprs must be
    deterministic: specs, frozen dataclasses, shapes) running on `device`."""
    versions = (FORMAT, jax.__version__, jaxlib.__version__, source_version(),
                os.environ.get('XLA_FLAGS', ''), device.platform, device.device_kind, device.id)
    return hashlib.sha256(repr((versions,) + parts).encode()).hexdigest()

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key + '.pkl')

  def load(self, key: str, **expected) -> tuple | None:
    """({name: loaded executable}, extras) saved under `key`, or None; also
    None (and the entry removed) when extras differ from `expected` (e.g.
    spec=its JSON: the entry must be the student asked for)."""
    try:
      with open(self._path(key), 'rb') as f:
        entry = pickle.loads(zlib.decompress(f.read()))
      if any(entry['extras'][name] != value for name, value in expected.items()):
        raise ValueError(f'entry {key} is not for {expected}')
      programs = {name: serialize_executable.deserialize_and_load(*payload)
                  for name, payload in entry['programs'].items()}
      return programs, entry['extras']
    except FileNotFoundError:
      return None
    except Exception:  # pylint: disable=broad-except  # a damaged entry: compile again
      self.discard(key)
      return None

  def discard(self, key: str) -> None:
    """Remove the entry under `key`, if any."""
    try:
      os.remove(self._path(key))
    except OSError:
      pass

  def save(self, key: str, programs: dict, extras: dict) -> None:
    """Write `programs` ({name: jax Compiled}, each compiled in this process,
    not taken from JAX's persistent cache: see persistent_cache_hits) and
    picklable `extras` under `key`, atomically: a reader sees the whole entry
    or none. A full disk or a read-only folder only costs the next process a
    compile."""
    try:
      payload = {'programs': {name: serialize_executable.serialize(p)
                              for name, p in programs.items()},
                 'extras': extras}
      os.makedirs(self.directory, exist_ok=True)
    except Exception:  # pylint: disable=broad-except  # a backend that cannot serialize
      return
    fd, tmp = tempfile.mkstemp(dir=self.directory, suffix='.tmp')
    try:
      with os.fdopen(fd, 'wb') as f:
        f.write(zlib.compress(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL), 1))
      os.replace(tmp, self._path(key))
    except Exception:  # pylint: disable=broad-except  # full disk, unpicklable extras
      os.remove(tmp)
