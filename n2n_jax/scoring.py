"""The seam between the search and whatever turns sampled students into
validation accuracies.

A scorer is any callable

    scorer(students, keys, seed, *, inside=None) -> list[StudentResult]

that gets one policy iteration's buildable students (spec.NetSpec, never a
degenerate verdict) in rollout order, one PRNG key per student (the student's
training randomness) and the search's seed (weight initialisation), and
returns one StudentResult per student, in the same order: an accuracy on the
validation split, or an error saying why the student failed (its reward is
then -1 and the search goes on). `inside` is a spec every student fits in
(the stage's source) when the run shares programs
(runtime.share_stage*_program); a scorer may ignore it.

The search calls its scorer once per policy iteration, with the students
still to train (with search.reuse_results, architectures already scored are
left out). It turns accuracies into rewards itself, so a scorer never sees
the reward, the constraints or the policy.

The default scorer is `evaluator.Evaluator`: each student distilled from the
teacher's logits for config.distill.epochs, as in the paper. Pass another to
`search.run(..., scorer=)` (or `experiment.run(..., scorer=)`) to search with
a cheaper proxy (fewer epochs, a subset, a learned accuracy predictor) or a
surrogate rule; the tests score students with deterministic rules this way
so that a search of tens of iterations needs no student training. A scorer
that has a `compile_seconds` attribute (seconds spent waiting for compiles)
has it reported in summary.json's `time.compile`. A scorer may also have

    scorer.prepare(source, *, removals)

which the search calls as a stage that shares programs starts, before its
policy samples (`removals`: stage 1's students, the source with layers
removed; else stage 2's, the source shrunk); the Evaluator starts compiling
the stage's shared program there, so that compile overlaps the policy's first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol


@dataclasses.dataclass
class StudentResult:
  accuracy: float  # on the validation split; nan when training failed
  error: str | None  # why the student failed (its reward is then -1), else None
  train_seconds: float = 0.0
  compile_seconds: float = 0.0
  variables: dict | None = None


class Scorer(Protocol):
  def __call__(
    self, students: Sequence, keys: Sequence, seed: int, *, inside=None
  ) -> list[StudentResult]: ...


def check_results(results, students) -> list[StudentResult]:
  """`results` as a list, or a clear error when a scorer broke the contract
  above (a wrong count would pair rewards with the wrong rollouts)."""
  results = list(results)
  if len(results) != len(students):
    raise TypeError(
      f'the scorer returned {len(results)} results for {len(students)} '
      'students; it must return one StudentResult per student, in order'
    )
  for i, r in enumerate(results):
    if not (hasattr(r, 'accuracy') and hasattr(r, 'error')):
      raise TypeError(
        f'the scorer returned {type(r).__name__} for student {i}; it must '
        'return scoring.StudentResult(accuracy, error)'
      )
  return results
