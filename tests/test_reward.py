"""The reward (paper 3.3), constraints and their relaxation (3.3.1)."""

import math

import pytest

from n2n_jax import reward as R


def test_paper_worked_examples():
  # Section 3.3 / appendix: A = 1, C = 0.25 -> 0.4375; A = 0.25, C = 1 -> 0.25.
  assert R.n2n_reward(1.0, 1.0, 0.25) == pytest.approx(0.4375)
  assert R.n2n_reward(0.25, 1.0, 1.0) == pytest.approx(0.25)
  # Accuracy is relative to the teacher's.
  assert R.n2n_reward(0.9, 0.9, 0.5) == pytest.approx(0.75)
  assert R.naive_reward(0.8, 0.9, 0.5) == pytest.approx(0.4)


def test_compression_against_teacher():
  assert R.compression(25, 100) == pytest.approx(0.75)
  s = R.score(0.98, 10_000, 100_000, 0.99)
  assert s.compression == pytest.approx(0.9)
  assert s.reward == pytest.approx(0.9 * 1.1 * 0.98 / 0.99)
  assert s.violations == ()
  assert R.score(float('nan'), 10, 100, 0.9).reward == R.DEGENERATE_REWARD


def test_unknown_names_list_valid_ones():
  with pytest.raises(ValueError, match='n2n, naive'):
    R.reward_fn('exp')
  with pytest.raises(ValueError, match='poly, linear, hard'):
    R.epsilon(1, 'cosine')


def test_constraints_and_relaxation():
  limits = R.Constraints.upper_bounds(params=50_000, flops=0)
  assert limits.quantities == ('params',)
  assert limits.violations({'params': 40_000, 'flops': 1e9}) == []
  assert limits.violations({'params': 60_000}) == ['1*params = 60,000 > 50,000']
  general = R.Constraints(('params', 'flops'), ((1.0, 0.001),), (10_000.0,))
  assert general.violations({'params': 5_000, 'flops': 4e6}) == []
  assert len(general.violations({'params': 7_000, 'flops': 4e6})) == 1
  with pytest.raises(ValueError, match='coefficients'):
    R.Constraints(('params',), ((1.0, 2.0),), (1.0,))
  with pytest.raises(KeyError, match='latency_ms'):
    R.Constraints.upper_bounds(latency_ms=5).violations({'params': 1})

  base = R.n2n_reward(0.9, 1.0, 0.8)
  s = R.score(0.9, 60_000, 300_000, 1.0, constraints=limits, measured={'params': 60_000}, eps=1.0)
  assert s.reward == pytest.approx(base) and s.violations  # eps 1: no penalty yet
  s = R.score(0.9, 60_000, 300_000, 1.0, constraints=limits, measured={'params': 60_000}, eps=0.0)
  assert s.reward == -1.0  # eps 0: the hard constraint
  assert R.relax(base, 0.5) == pytest.approx(0.5 * (base + 1) - 1)


def test_epsilon_schedules_start_at_one_and_decrease():
  for schedule in ('poly', 'linear'):
    values = [R.epsilon(t, schedule, horizon=15) for t in range(20)]
    assert values[0] == 1.0 and values[-1] == 0.0
    assert all(a >= b for a, b in zip(values, values[1:]))
  assert R.epsilon(5, 'poly', 15, 4) == pytest.approx((1 - 5 / 15) ** 4)
  assert R.epsilon(0, 'hard') == 0.0
  assert math.isclose(R.epsilon(3, 'linear', 6), 0.5)
