"""The search's typed state (n2n_jax/search_state.py): it round-trips through
the checkpoint's JSON record unchanged, and a record in another layout is
refused with a message that says what to do."""

import json
import types

import jax
import pytest
from conftest import load_config

from n2n_jax import checkpoint as checkpoint_lib
from n2n_jax import search
from n2n_jax import search_state
from n2n_jax import zoo

ENTRY = {
  'reward': 0.5,
  'val_accuracy': 0.9,
  'params': 1234,
  'spec': {'name': 'student'},
  'stage': 1,
  'iteration': 2,
}


def stored_record() -> dict:
  """A checkpoint's JSON record as search.run writes it after three iterations."""
  records = [
    {'stage': s, 'iteration': i, 'seconds': 1.5, 'rewards': [0.1, -1.0]}
    for s, i in ((1, 1), (1, 2), (2, 1))
  ]
  return {
    'origin': {'seed': 0, 'search': {'rollouts': 2}},
    'done': {'1': 2, '2': 1},
    'best_stage1': ENTRY,
    'best_stage2': None,
    'best': ENTRY,
    'records': records,
    'stage2_source': {'name': 'source'},
    'compile_seconds': 3.25,
    'search_seconds': 12.5,
    'known_accuracies': {'abc': 0.75},
    'pareto': [ENTRY],
    'latencies': {'abc': 1.5},
  }


def as_json(d):
  return json.loads(json.dumps(d))


def test_the_stored_record_round_trips_unchanged():
  stored = as_json(stored_record())
  state = search_state.SearchState.from_dict(stored)
  assert state.done == {1: 2, 2: 1}
  assert state.stage_best == {1: ENTRY, 2: None}
  assert state.records[2]['stage'] == 2 and state.search_seconds == 12.5
  again = state.to_dict()
  assert again == stored
  # The same text on disk: keys in the order they were always written.
  assert json.dumps(again) == json.dumps(stored)


def test_a_fresh_state_is_the_record_a_search_always_started_from():
  origin = {'seed': 3}
  assert search_state.SearchState.fresh(origin).to_dict() == {
    'origin': origin,
    'done': {'1': 0, '2': 0},
    'best_stage1': None,
    'best_stage2': None,
    'best': None,
    'records': [],
    'stage2_source': None,
    'compile_seconds': 0.0,
    'search_seconds': 0.0,
    'known_accuracies': {},
    'pareto': [],
    'latencies': {},
  }


def test_records_stored_before_later_keys_resume_with_their_defaults():
  stored = stored_record()
  for key in ('known_accuracies', 'latencies', 'pareto'):
    del stored[key]
  state = search_state.SearchState.from_dict(stored)
  assert (state.known_accuracies, state.latencies, state.pareto) == ({}, {}, [])


def broken(change):
  stored = stored_record()
  change(stored)
  return stored


@pytest.mark.parametrize(
  'stored, says',
  [
    (broken(lambda d: d.pop('done')), 'the key "done" is missing'),
    (broken(lambda d: d.pop('origin')), 'the key "origin" is missing'),
    (broken(lambda d: d.update(done={'1': 2})), '"done" has keys'),
    (broken(lambda d: d.update(done={'1': 2, '2': 'x'})), 'not a count'),
    (broken(lambda d: d.update(records={})), '"records" is {}, not a list'),
    (broken(lambda d: d.update(search_seconds='12')), 'not a number'),
    (broken(lambda d: d.update(best=[1])), '"best" is [1], not a JSON object or null'),
    (broken(lambda d: d.update(best={'params': 3})), '"best" lacks reward'),
    (broken(lambda d: d['records'].append({'stage': 1})), '"records"[3] lacks iteration'),
    (broken(lambda d: d.update(stage3={})), 'keys this version does not know: stage3'),
    ([], 'not a JSON object'),
  ],
)
def test_a_record_in_another_layout_is_refused_saying_what_is_wrong(stored, says):
  with pytest.raises(search_state.LayoutError) as e:
    search_state.SearchState.from_dict(stored)
  assert says in str(e.value)


@pytest.mark.parametrize('key', ['done', 'origin'])
def test_the_search_refuses_to_resume_a_malformed_checkpoint(key, tmp_path):
  """The refusal names the workdir and the way out, not a KeyError."""
  config = load_config('digits')
  config.runtime.progress = False
  teacher = types.SimpleNamespace(spec=zoo.get('digits_cnn', (8, 8, 1), 10))
  stage1 = search.removal_stage(config, teacher.spec)
  states = search._policy_states(  # pylint: disable=protected-access
    config, stage1, jax.random.fold_in(jax.random.key(config.seed), 0), ''
  )
  origin = search._search_origin(config)  # pylint: disable=protected-access
  stored = search_state.SearchState.fresh(origin).to_dict()
  del stored[key]
  workdir = str(tmp_path / 'run')
  checkpoint_lib.Checkpoints(workdir).save(1, states, stored)
  with pytest.raises(search.ResumeMismatch) as e:
    search.run(config, workdir, teacher, None, progress=False)
  message = str(e.value)
  assert workdir in message and f'the key "{key}" is missing' in message
  assert '--config.search.restart=True' in message
