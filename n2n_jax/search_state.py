"""What a search knows between iterations, as one typed object.

search.run keeps it in a SearchState and checkpoints it as the JSON record
search checkpoints hold (to_dict / from_dict), in the layout stored since the
first searches, so a search checkpointed by any version resumes. A stored
record that cannot be read back (a key missing or of the wrong type, a key
this version does not know) raises LayoutError, which says what is wrong;
search.run turns it into a refusal naming the workdir.
"""

from __future__ import annotations

import dataclasses
import numbers

STAGES = (1, 2)

# What a best-student entry holds (search._valid_students makes them).
ENTRY_KEYS = ('reward', 'val_accuracy', 'params', 'spec', 'stage', 'iteration')
# What the search itself reads back from a stored metrics record.
RECORD_KEYS = ('stage', 'iteration', 'seconds')


class LayoutError(ValueError):
  """A stored search state is not in the layout this version reads."""


@dataclasses.dataclass
class SearchState:
  """The search's state after its last finished iteration."""

  # The config's result sections (search._search_origin): a resumed run must match them.
  origin: dict
  # Stage number -> iterations of that stage finished.
  done: dict[int, int]
  # Every finished iteration's metrics record (metrics.jsonl's lines), in order.
  records: list[dict]
  # Stage number -> its best valid student entry so far (ENTRY_KEYS), None before one.
  stage_best: dict[int, dict | None]
  # The best valid student entry of either stage: the one trained in the end.
  best: dict | None
  # spec.to_dict of the network stage 2 shrinks, fixed when stage 2 starts so
  # that a resumed run shrinks the same one; None before.
  stage2_source: dict | None
  # Seconds spent compiling student programs, summed over the runs so far.
  compile_seconds: float
  # Seconds of search (both stages), summed over the runs so far.
  search_seconds: float
  # architecture_key -> first validation accuracy (used with search.reuse_results).
  known_accuracies: dict[str, float]
  # architecture_key -> measured latency in ms (with constraints.max_latency_ms).
  latencies: dict[str, float]
  # The Pareto front of valid entries (pareto.update), smallest first.
  pareto: list[dict]

  @classmethod
  def fresh(cls, origin: dict) -> SearchState:
    """The state of a search that has not run an iteration."""
    return cls(
      origin=origin,
      done={n: 0 for n in STAGES},
      records=[],
      stage_best={n: None for n in STAGES},
      best=None,
      stage2_source=None,
      compile_seconds=0.0,
      search_seconds=0.0,
      known_accuracies={},
      latencies={},
      pareto=[],
    )

  def to_dict(self) -> dict:
    """The checkpoint's JSON record (its keys in the order they were always written)."""
    return {
      'origin': self.origin,
      'done': {str(n): self.done[n] for n in STAGES},
      **{f'best_stage{n}': self.stage_best[n] for n in STAGES},
      'best': self.best,
      'records': self.records,
      'stage2_source': self.stage2_source,
      'compile_seconds': self.compile_seconds,
      'search_seconds': self.search_seconds,
      'known_accuracies': self.known_accuracies,
      'pareto': self.pareto,
      'latencies': self.latencies,
    }

  @classmethod
  def from_dict(cls, stored: dict) -> SearchState:
    """The state a checkpoint's JSON record holds; LayoutError if it is not
    one. Keys added after searches were first stored may be missing."""
    if not isinstance(stored, dict):
      raise LayoutError(f'the record is a {type(stored).__name__}, not a JSON object')
    known = {
      'origin',
      'done',
      'best',
      'records',
      'stage2_source',
      'compile_seconds',
      'search_seconds',
      *OPTIONAL,
      *(f'best_stage{n}' for n in STAGES),
    }
    unknown = sorted(set(stored) - known)
    if unknown:
      raise LayoutError(f'it has keys this version does not know: {", ".join(unknown)}')
    get = lambda key, kind: _field(stored, key, kind)
    done = get('done', dict)
    if sorted(done) != [str(n) for n in STAGES]:
      raise LayoutError(f'"done" has keys {sorted(done)}, not {[str(n) for n in STAGES]}')
    for n in STAGES:
      if not _is_count(done[str(n)]):
        raise LayoutError(f'"done"["{n}"] is {done[str(n)]!r}, not a count of iterations')
    records = get('records', list)
    for i, record in enumerate(records):
      _check_entry(record, RECORD_KEYS, f'"records"[{i}]')
    stage_best = {n: get(f'best_stage{n}', (dict, type(None))) for n in STAGES}
    for n, entry in stage_best.items():
      _check_entry(entry, ENTRY_KEYS, f'"best_stage{n}"')
    best = get('best', (dict, type(None)))
    _check_entry(best, ENTRY_KEYS, '"best"')
    front = get('pareto', list)
    for i, entry in enumerate(front):
      _check_entry(entry, ENTRY_KEYS, f'"pareto"[{i}]')
    return cls(
      origin=get('origin', dict),
      done={n: done[str(n)] for n in STAGES},
      records=records,
      stage_best=stage_best,
      best=best,
      stage2_source=get('stage2_source', (dict, type(None))),
      compile_seconds=get('compile_seconds', numbers.Real),
      search_seconds=get('search_seconds', numbers.Real),
      known_accuracies=get('known_accuracies', dict),
      latencies=get('latencies', dict),
      pareto=front,
    )


# Keys added after searches were first stored, with the value a search stored
# before them starts from.
OPTIONAL = {'known_accuracies': dict, 'latencies': dict, 'pareto': list}

_KINDS = {dict: 'a JSON object', list: 'a list', numbers.Real: 'a number', type(None): 'null'}


def _field(stored: dict, key: str, kind):
  if key not in stored:
    if key in OPTIONAL:
      return OPTIONAL[key]()
    raise LayoutError(f'the key "{key}" is missing')
  value = stored[key]
  kinds = kind if isinstance(kind, tuple) else (kind,)
  if isinstance(value, bool) or not isinstance(value, kinds):
    raise LayoutError(f'"{key}" is {_short(value)}, not ' + ' or '.join(_KINDS[k] for k in kinds))
  return value


def _check_entry(entry, keys, where: str) -> None:
  if entry is None:
    return
  if not isinstance(entry, dict):
    raise LayoutError(f'{where} is {_short(entry)}, not a JSON object')
  missing = [k for k in keys if k not in entry]
  if missing:
    raise LayoutError(f'{where} lacks {", ".join(missing)}')


def _is_count(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + '...'
