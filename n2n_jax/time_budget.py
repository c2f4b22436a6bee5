"""runtime.time_budget_minutes: a search that ends on time instead of after a
fixed number of iterations (a cloud window, a queue's time limit).

The rule (README, "A time budget"): the budget is search time
only (not teacher or final training), counted over resumed runs. Stage 1 may
use its share of it, budget x stage1_iterations / (stage1_iterations +
stage2_iterations), and stage 2 what is left of the whole budget (so time stage
1 did not use goes to stage 2). A stage starts another iteration only when
its time so far plus the mean of its finished iterations stays within its
deadline; its first iteration starts whenever the deadline has not passed.
The iteration counts remain upper bounds. A resumed run may have another
budget and goes on where the last one stopped: stage 1 if stage 2 has not
finished an iteration yet (stage 2 shrinks stage 1's best, so once it has, stage
1 is closed), else stage 2.
"""

from __future__ import annotations


def stage_deadline(
  budget_minutes: float, number: int, stage1_iterations: int, stage2_iterations: int
) -> float | None:
  """Seconds of search time by which stage `number` ends, or None without a budget."""
  if not budget_minutes:
    return None
  budget = 60.0 * budget_minutes
  if number == 1:
    return budget * stage1_iterations / max(stage1_iterations + stage2_iterations, 1)
  return budget


def room_for_another(elapsed: float, deadline: float | None, finished_seconds) -> bool:
  """Whether an iteration may start `elapsed` seconds into the search, given
  the stage's `deadline` and the seconds its finished iterations took."""
  if deadline is None:
    return True
  finished_seconds = list(finished_seconds)
  expected = sum(finished_seconds) / len(finished_seconds) if finished_seconds else 0.0
  return elapsed < deadline and elapsed + expected <= deadline
