"""Compiled student programs kept in memory, and the compiles in flight.

One cache serves every Evaluator it is handed to: `SHARED`, the default, is
process-wide, so a resumed search, the final training of a student seen
during the search, or a second search in the same process reuses what an
earlier one compiled. Programs on disk (other processes) are the program
store's business (program_store.py); this cache only holds them once loaded.

`built` lists, in order, every program this cache was given (a `Built`:
compiled, or loaded from the program store), so tests and the throughput
benchmark can count programs without reaching into the evaluator.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
from typing import NamedTuple


class Built(NamedTuple):
  spec: object  # the spec.NetSpec it runs (a wide one, for students inside a source)
  stacking: tuple | None  # (lowering, students per call), stacked.py; None: one student
  loaded: bool  # from the program store, not compiled
  thread: str  # the thread that built it ('n2n-compile-ahead' when compiled ahead)
  started: float  # time.perf_counter() at its start and end
  ended: float


class ProgramCache:
  """Programs by key (least recently used dropped beyond `max_programs`),
  and futures of compiles started ahead (StudentPrograms.compile_ahead)."""

  def __init__(self, max_programs: int = 512):
    self.max_programs = max_programs
    self._programs: collections.OrderedDict = collections.OrderedDict()
    self._pending: dict = {}  # key -> Future of a compile on its way
    self._lock = threading.Lock()  # students on several devices compile in threads
    self.built: list = []  # a Built for every program added, in order

  def clear(self) -> None:
    """Forget every program and the log (compiles in flight finish unseen)."""
    with self._lock:
      self._programs.clear()
      self._pending.clear()
      self.built.clear()

  def take(self, key) -> tuple:
    """(program or None, future of a compile on its way or None) for `key`;
    the future, if any, is handed over to the caller."""
    with self._lock:
      pending = self._pending.pop(key, None)
      program = self._programs.get(key)
      if program is not None:
        self._programs.move_to_end(key)
      return program, pending

  def add(self, key, program, built: Built) -> None:
    with self._lock:
      self._programs[key] = program
      self.built.append(built)
      if len(self._programs) > self.max_programs:
        self._programs.popitem(last=False)

  def discard(self, key, program) -> None:
    """Drop `program` (e.g. a bad program store entry) if `key` still holds it."""
    with self._lock:
      if self._programs.get(key) is program:
        del self._programs[key]

  def reserve(self, keys) -> list:
    """A new Future for each of `keys` neither cached nor on its way, in
    order: the caller compiles those and settles the futures."""
    out = []
    with self._lock:
      for key in keys:
        if key in self._programs or key in self._pending:
          continue
        self._pending[key] = concurrent.futures.Future()
        out.append((key, self._pending[key]))
    return out

  def pending(self) -> int:
    with self._lock:
      return len(self._pending)

  def compiled_count(self) -> int:
    """Programs compiled by XLA in this cache's life (not loaded from the store)."""
    return sum(1 for b in self.built if not b.loaded)


SHARED = ProgramCache()
