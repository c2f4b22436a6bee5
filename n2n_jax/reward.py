"""The reward of a sampled student (paper section 3.3) and hardware constraints
(section 3.3.1), as plain functions of measured numbers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

DEGENERATE_REWARD = -1.0


def compression(student_params: int, teacher_params: int) -> float:
  """The paper's relative compression C = 1 - params(student)/params(teacher)."""
  return 1.0 - student_params / teacher_params


def n2n_reward(accuracy: float, teacher_accuracy: float, c: float) -> float:
  """R = R_c * R_a = C(2 - C) * A / A_teacher: the concave R_c favours students
  that keep accuracy over ones that compress a little more."""
  return c * (2.0 - c) * accuracy / teacher_accuracy


def naive_reward(accuracy: float, teacher_accuracy: float, c: float) -> float:
  """Appendix 11.1's baseline design, A * C, for comparison."""
  del teacher_accuracy
  return accuracy * c


_REWARD_FNS = {'n2n': n2n_reward, 'naive': naive_reward}
REWARDS = tuple(_REWARD_FNS)


def reward_fn(name: str):
  if name not in _REWARD_FNS:
    raise ValueError(f'unknown reward {name!r}; valid rewards: {", ".join(REWARDS)}')
  return _REWARD_FNS[name]


@dataclasses.dataclass(frozen=True)
class Constraints:
  """A x <= b over named measured quantities (e.g. 'params', 'flops'; a
  measured 'latency_ms' can be added the same way). Each row of `matrix` has
  one coefficient per name in `quantities`."""

  quantities: tuple = ()
  matrix: tuple = ()  # rows of coefficients
  bounds: tuple = ()

  def __post_init__(self):
    if len(self.matrix) != len(self.bounds):
      raise ValueError(f'constraints: {len(self.matrix)} rows but {len(self.bounds)} bounds')
    for row in self.matrix:
      if len(row) != len(self.quantities):
        raise ValueError(
          f'constraints: a row has {len(row)} coefficients for '
          f'{len(self.quantities)} quantities {self.quantities}'
        )

  @classmethod
  def upper_bounds(cls, **limits: float) -> Constraints:
    """The common case: quantity <= limit for each given quantity (0 = none)."""
    names = tuple(k for k, v in limits.items() if v)
    rows = tuple(tuple(1.0 if n == m else 0.0 for m in names) for n in names)
    return cls(names, rows, tuple(float(limits[n]) for n in names))

  def violations(self, measured: Mapping[str, float]) -> list:
    """Readable descriptions of the rows that `measured` breaks."""
    missing = [q for q in self.quantities if q not in measured]
    if missing:
      raise KeyError(f'constraints need {missing}, measured only {sorted(measured)}')
    out = []
    for row, bound in zip(self.matrix, self.bounds):
      value = sum(a * measured[q] for a, q in zip(row, self.quantities))
      if value > bound:
        terms = ' + '.join(f'{a:g}*{q}' for a, q in zip(row, self.quantities) if a)
        out.append(f'{terms} = {value:,.6g} > {bound:,.6g}')
    return out


# epsilon_t by schedule, from frac = clip(1 - t/horizon, 0, 1) and the power.
_EPSILON_SCHEDULES = {
  'poly': lambda frac, power: frac**power,  # the authors' code
  'linear': lambda frac, power: frac,
  'hard': lambda frac, power: 0.0,  # constraint violations always get -1
}
EPSILON_SCHEDULES = tuple(_EPSILON_SCHEDULES)


def epsilon(
  iteration: int, schedule: str = 'poly', horizon: float = 15.0, power: float = 4.0
) -> float:
  """epsilon_t of section 3.3.1: starts at 1 and decreases monotonically so
  constraints are enforced gradually. 'poly' is the authors' code,
  clip((1 - t/horizon)^power, 0, 1); 'linear' is 1 - t/horizon; 'hard' is 0
  (constraint violations always get -1). t counts from 0."""
  if schedule not in _EPSILON_SCHEDULES:
    raise ValueError(
      f'unknown epsilon schedule {schedule!r}; valid: {", ".join(EPSILON_SCHEDULES)}'
    )
  frac = min(max(1.0 - iteration / horizon, 0.0), 1.0)
  return _EPSILON_SCHEDULES[schedule](frac, power)


def relax(reward: float, eps: float) -> float:
  """A constraint-violating student's reward: eps*(R + 1) - 1, which is R at
  eps = 1 and -1 at eps = 0."""
  return eps * (reward + 1.0) - 1.0


@dataclasses.dataclass(frozen=True)
class Score:
  reward: float
  compression: float  # C in [0, 1)
  violations: tuple = ()


def score(
  accuracy: float,
  student_params: int,
  teacher_params: int,
  teacher_accuracy: float,
  *,
  kind: str = 'n2n',
  constraints: Constraints | None = None,
  measured: Mapping[str, float] | None = None,
  eps: float = 0.0,
) -> Score:
  """The reward for a built and trained student. Degenerate students never
  get here: the caller gives them DEGENERATE_REWARD."""
  if not math.isfinite(accuracy):
    return Score(DEGENERATE_REWARD, 0.0, ('accuracy is not finite',))
  c = compression(student_params, teacher_params)
  r = reward_fn(kind)(accuracy, teacher_accuracy, c)
  broken = tuple(constraints.violations(measured or {})) if constraints else ()
  if broken:
    r = relax(r, eps)
  return Score(r, c, broken)
