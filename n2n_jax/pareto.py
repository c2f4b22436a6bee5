"""The accuracy-vs-size trade-off the search found: its Pareto front.

Near C = 1 the reward's compression term C(2 - C) is almost flat (0.998 at 24x,
0.9999 at 150x), so among small students the answer is decided by one noisy
short-distillation accuracy. The front keeps every valid, constraint-respecting
student that no other beats on both size and validation accuracy, so that a
user can see the trade-off and take a smaller or a more accurate student than
the answer (final.pareto_max trains some of them like the answer).

A front entry is a dict: spec (spec_lib.to_dict), params, val_accuracy (the
search's short distillation), reward, stage, iteration. The front is small (it
grows with the number of distinct sizes where accuracy improves), kept in the
search's checkpoint, and sorted by params.
"""

from __future__ import annotations

import math

FILE = 'pareto.json'
STUDENTS_DIR = 'students'


def dominates(a: dict, b: dict) -> bool:
  """Whether `a` is at least as small and as accurate as `b`, and better in one."""
  return (
    a['params'] <= b['params']
    and a['val_accuracy'] >= b['val_accuracy']
    and (a['params'] < b['params'] or a['val_accuracy'] > b['val_accuracy'])
  )


def update(front: list[dict], candidates) -> list[dict]:
  """`front` with `candidates` added where nothing dominates them (a candidate
  equal in size and accuracy to a member is left out: the first one found
  stays), and the members they dominate removed; sorted by params."""
  front = list(front)
  for c in candidates:
    if any(
      dominates(m, c) or (m['params'] == c['params'] and m['val_accuracy'] == c['val_accuracy'])
      for m in front
    ):
      continue
    front = [m for m in front if not dominates(c, m)] + [c]
  return sorted(front, key=lambda m: (m['params'], -m['val_accuracy']))


def spread(front: list[dict], k: int, leave_out: dict | None = None) -> list[dict]:
  """Up to `k` members of `front` spread evenly in log(params): the smallest,
  the largest and those nearest to evenly spaced sizes between them.
  `leave_out` (a spec dict: the answer, trained anyway) is not chosen."""
  members = [m for m in front if m['spec'] != leave_out]
  if k <= 0 or not members:
    return []
  if len(members) <= k:
    return members
  logs = [math.log(m['params']) for m in members]
  chosen = []
  for i in range(k):
    target = logs[0] + (logs[-1] - logs[0]) * (i / (k - 1) if k > 1 else 0.0)
    free = [j for j in range(len(members)) if j not in chosen]
    chosen.append(min(free, key=lambda j: (abs(logs[j] - target), j)))
  return [members[j] for j in sorted(chosen)]
