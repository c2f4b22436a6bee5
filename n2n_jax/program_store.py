"""Compiled student programs on disk, so that a new process (a re-run, a
resumed search, a second search on the same teacher) starts an architecture it
has met before without tracing, lowering or compiling anything.

JAX's persistent compilation cache already skips XLA's compile on a re-run,
but it finds its entry by hashing the lowered program, so every new process
still traces and lowers each student's train step and forward pass first,
about half the time a known architecture takes to come up again
(docs/performance.md, "Compiling"). This store instead keys a student's serialized
executables (train step, forward pass, initial optimiser state) and its
variable shapes by what determines them: the spec, the distillation settings,
the data shapes, the device, XLA_FLAGS, and the versions of JAX and of this
package's own source. Loading an entry is one file read and one executable
deserialisation per program.

What is trusted. An entry holds compiled code (XLA executables: machine code
on the CPU) inside a pickle, and loading either runs code. So an entry is
loaded only if it carries an HMAC-SHA256, made with this user's secret key,
of its own key and bytes (user_key(): 32 random bytes in
$XDG_CONFIG_HOME/n2n_jax/program_store.key, or ~/.config/..., mode 0600,
created on first use). Anything else - another user's entry, a flipped
byte, an entry copied under another key, a crafted pickle - is never
unpickled: its programs are compiled again, with one warning. A store folder
that another user owns or can write to (group- or world-writable without
the sticky bit), or one inside such a folder, is not used at all unless
runtime.trust_shared_cache is set; JAX's persistent cache, which loads
executables too, follows the same rule (runtime.enable_compilation_cache).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import pickle
import secrets
import stat
import tempfile
import threading
import warnings
import zlib

import jax
import jaxlib
from jax.experimental import serialize_executable

# Bumped when an entry's layout changes; entries of other layouts are ignored.
FORMAT = 3
SUBDIR = 'n2n_programs'
SUFFIX = '.entry'
# An entry file: MAGIC, the 32-byte tag, then the zlib-compressed pickle.
MAGIC = b'n2n_jax program store entry\n'
KEY_BYTES = 32

# An executable JAX took from its persistent cache serializes incompletely
# (its payload lacks some kernels, and loading it in another process fails at
# its first call with "NOT_FOUND: Function ... not found"; seen with JAX 0.10.2,
# docs/performance.md, "Compiling"). Only programs really compiled may be saved, so
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


def for_cache_dir(cache_dir: str, *, trust_shared: bool = False) -> ProgramStore | None:
  """The store that lives beside JAX's persistent cache in `cache_dir`
  (runtime.compilation_cache_dir); None when that cache is off ('').
  trust_shared: runtime.trust_shared_cache."""
  if not cache_dir:
    return None
  return ProgramStore(os.path.join(cache_dir, SUBDIR), trust_shared=trust_shared)


def for_runtime(runtime_config) -> ProgramStore | None:
  """for_cache_dir with a config's runtime section (compilation_cache_dir,
  trust_shared_cache)."""
  return for_cache_dir(
    runtime_config.compilation_cache_dir, trust_shared=runtime_config.trust_shared_cache
  )


_WARNED = set()
_WARNED_LOCK = threading.Lock()


def _warn_once(what, message: str) -> None:
  with _WARNED_LOCK:
    if what in _WARNED:
      return
    _WARNED.add(what)
  warnings.warn(message, stacklevel=3)


def writable_by_others(directory: str) -> str | None:
  """Why users other than this one could put files into `directory` or the
  folder that holds it (so replace it), or None. Folders that do not exist
  yet are created by us, mode 0700."""
  if not hasattr(os, 'getuid'):  # no POSIX owners and modes to check
    return None
  directory = os.path.abspath(directory)
  for path in (directory, os.path.dirname(directory)):
    try:
      st = os.stat(path)
    except FileNotFoundError:
      continue
    if st.st_uid != os.getuid():
      return f'{path} belongs to another user (uid {st.st_uid})'
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
      who = 'everyone' if st.st_mode & stat.S_IWOTH else 'its group'
      return f'{path} can be written by {who} (chmod go-w {path} if only you use it)'
  return None


def key_file() -> str:
  """Where this user's program store key lives."""
  config_home = os.environ.get('XDG_CONFIG_HOME') or os.path.expanduser('~/.config')
  return os.path.join(config_home, 'n2n_jax', 'program_store.key')


_KEYS = {}  # key file path -> its key, or why it cannot be used
_KEYS_LOCK = threading.Lock()


def user_key(path: str | None = None) -> bytes | None:
  """This user's secret for signing entries (created on first use), or None
  with one warning when it cannot be made or is not private: the store is
  then off, which costs compiles, nothing else."""
  path = path or key_file()
  with _KEYS_LOCK:
    if path not in _KEYS:
      _KEYS[path] = _read_or_create_key(path)
    key = _KEYS[path]
  if isinstance(key, str):
    _warn_once(('key', path), f'compiled programs are not stored or loaded: {key}')
    return None
  return key


def _read_or_create_key(path: str) -> bytes | str:
  try:
    if not os.path.exists(path):
      os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))  # mode 0600
      try:
        with os.fdopen(fd, 'wb') as f:
          f.write(secrets.token_bytes(KEY_BYTES))
        try:
          os.link(tmp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
          pass
      finally:
        os.remove(tmp)
    st = os.stat(path)
    if hasattr(os, 'getuid') and st.st_uid != os.getuid():
      return f'the key {path} belongs to another user'
    if st.st_mode & 0o077:
      return f'the key {path} can be read by other users (chmod 600 it, or delete it)'
    with open(path, 'rb') as f:
      key = f.read()
    if len(key) != KEY_BYTES:
      return f'the key {path} is damaged (delete it; a new one is made)'
    return key
  except OSError as e:
    return f'the key {path} cannot be created or read ({e})'


class ProgramStore:
  """Entries are zlib-compressed pickles of {'programs': {name: (executable,
  in tree, out tree)}, 'extras': {...}} in `directory`, one file per key,
  each signed (see the module docstring; compressing makes them several
  times smaller for milliseconds each way, docs/performance.md, "Compiling").
  A missing, unreadable, unsigned or stale entry is a miss, never an error:
  the caller compiles and saves again. `secret` replaces this user's key
  (user_key()); trust_shared uses a folder other users can write to."""

  def __init__(self, directory: str, *, trust_shared: bool = False, secret: bytes | None = None):
    self.directory = directory
    self.trust_shared = trust_shared
    self._secret = secret

  def key(self, device, *parts) -> str:
    """The entry name for programs determined by `parts` (reprs must be
    deterministic: specs, frozen dataclasses, shapes) running on `device`."""
    versions = (
      FORMAT,
      jax.__version__,
      jaxlib.__version__,
      source_version(),
      os.environ.get('XLA_FLAGS', ''),
      device.platform,
      device.device_kind,
      device.id,
    )
    return hashlib.sha256(repr((versions,) + parts).encode()).hexdigest()

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, key + SUFFIX)

  def _usable_secret(self) -> bytes | None:
    """The key to sign and check entries with, or None (warned once) when
    this folder must not be used."""
    if not self.trust_shared:
      why = writable_by_others(self.directory)
      if why:
        _warn_once(
          ('shared', self.directory),
          f'the program store {self.directory} is not used: {why}, so another user '
          'could plant code there that would run as you. Students compile as usual; '
          'runtime.trust_shared_cache=True uses it anyway (entries still need your '
          'key).',
        )
        return None
    return self._secret if self._secret is not None else user_key()

  def _tag(self, secret: bytes, key: str, body: bytes) -> bytes:
    return hmac.new(secret, key.encode() + b'\0' + body, hashlib.sha256).digest()

  def _read_entry(self, key: str) -> dict | None:
    """The entry under `key` if this user signed it, else None (a wrongly
    signed one warned about once and removed: compiling writes it anew)."""
    secret = self._usable_secret()
    if secret is None:
      return None
    try:
      with open(self._path(key), 'rb') as f:
        data = f.read()
    except OSError:  # missing, or unreadable
      return None
    tag, body = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if not (data.startswith(MAGIC) and hmac.compare_digest(tag, self._tag(secret, key, body))):
      _warn_once(
        ('unsigned', self.directory),
        f'the program store {self.directory} holds an entry not signed with your '
        f'key ({key[:16]}...: damaged, changed, or written by someone else); it is '
        'not loaded, and its programs are compiled again',
      )
      self.discard(key)
      return None
    return pickle.loads(zlib.decompress(body))

  def _write_entry(self, key: str, entry: dict) -> None:
    """Sign and write `entry` under `key`, atomically (a reader sees the
    whole entry or none); a full disk or a read-only folder is ignored."""
    secret = self._usable_secret()
    if secret is None:
      return
    tmp = None
    try:
      body = zlib.compress(pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL), 1)
      os.makedirs(os.path.dirname(os.path.abspath(self.directory)), mode=0o700, exist_ok=True)
      os.makedirs(self.directory, mode=0o700, exist_ok=True)
      fd, tmp = tempfile.mkstemp(dir=self.directory, suffix='.tmp')
      with os.fdopen(fd, 'wb') as f:
        f.write(MAGIC + self._tag(secret, key, body) + body)
      os.replace(tmp, self._path(key))
    except Exception as e:  # pylint: disable=broad-except  # full disk, read-only, unpicklable
      if isinstance(e, OSError):
        _warn_once(
          ('write', self.directory),
          f'the program store {self.directory} cannot be written ({e.strerror}); '
          'students compile as usual and their programs are not stored',
        )
      if tmp is not None:
        with contextlib.suppress(OSError):
          os.remove(tmp)

  def load(self, key: str, **expected) -> tuple | None:
    """({name: loaded executable}, extras) saved under `key`, or None; also
    None (and the entry removed) when extras differ from `expected` (e.g.
    spec=its JSON: the entry must be the student asked for)."""
    try:
      entry = self._read_entry(key)
      if entry is None:
        return None
      if any(entry['extras'][name] != value for name, value in expected.items()):
        raise ValueError(f'entry {key} is not for {expected}')
      programs = {
        name: serialize_executable.deserialize_and_load(*payload)
        for name, payload in entry['programs'].items()
      }
      return programs, entry['extras']
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
    picklable `extras` under `key`. A full disk or a read-only folder only
    costs the next process a compile."""
    try:
      payload = {name: serialize_executable.serialize(p) for name, p in programs.items()}
    except Exception:  # pylint: disable=broad-except  # a backend that cannot serialize
      return
    self._write_entry(key, {'programs': payload, 'extras': extras})
