"""The two-stage search end to end on a tiny budget: outputs, export, resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import best_recorded
from conftest import tiny_search
from conftest import without_timing
from conftest import workdir_with_teacher

from n2n_jax import checkpoint as checkpoint_lib
from n2n_jax import data as data_lib
from n2n_jax import evaluator as evaluator_lib
from n2n_jax import experiment
from n2n_jax import export
from n2n_jax import padding
from n2n_jax import policies
from n2n_jax import reinforce
from n2n_jax import report
from n2n_jax import search
from n2n_jax import spec as S
from n2n_jax import teacher as teacher_lib
from n2n_jax import zoo


@pytest.mark.slow
def test_tiny_search_writes_every_output(config_factory, teacher_dir, tmp_path):
  config = tiny_search(config_factory('digits'))
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  summary = experiment.run(config, workdir)

  records = report.read_metrics(workdir)
  assert [(r['stage'], r['iteration']) for r in records] == [(1, 1), (1, 2), (2, 1), (2, 2)]
  for r in records:
    assert len(r['rewards']) == len(r['accuracies']) == len(r['params']) == 2
    assert r['mean_reward'] == pytest.approx(np.mean(r['rewards']))
    for reward, why in zip(r['rewards'], r['degenerate']):
      if why is not None:
        assert reward == -1.0  # degenerate or failed students score -1, the search goes on
  on_disk = json.loads(open(os.path.join(workdir, 'summary.json')).read())
  assert on_disk == json.loads(json.dumps(summary))
  teacher_params = summary['teacher']['params']
  assert summary['student']['params'] < teacher_params
  assert summary['compression'] == pytest.approx(teacher_params / summary['student']['params'])
  # The student trained to the end is the search's best (tests/test_search_decisions.py
  # checks the choice on searches scored by rules).
  best = best_recorded(records)
  assert S.short_text(S.from_dict(summary['student']['spec'])) == best['spec_text']
  assert (
    summary['student']['stage'],
    summary['student']['params'],
    summary['student']['search_val_accuracy'],
  ) == (best['stage'], best['params'], best['val_accuracy'])
  assert set(summary['time']) == {'teacher', 'search', 'compile', 'final'}
  for name in ('report.md', 'search_stage1.png', 'search_stage2.png', 'accuracy_vs_params.png'):
    assert os.path.getsize(os.path.join(workdir, name)) > 1000, name
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  # 'auto' sharing on a CPU, digits-sized students: stage 2 inside its source
  # (the rule finds a compile dearer than the extra arithmetic), stage 1 on its
  # own programs (students do not train together on CPUs).
  assert [r['shared_program'] for r in records] == [r['stage'] == 2 for r in records]
  text = open(os.path.join(workdir, 'report.md')).read()
  assert 'Stage 1 trained its students inside' not in text
  assert "Stage 2 trained its students inside their source's compiled program" in text

  # The exported student loads with one call and reproduces the reported accuracy.
  model, variables = export.load_student(os.path.join(workdir, 'student'))
  assert S.param_count(model.spec) == summary['student']['params']
  ds = data_lib.load(config.data)
  logits = model.apply(variables, ds.test_images, train=False)
  accuracy = float(np.mean(np.argmax(logits, -1) == np.asarray(ds.test_labels)))
  assert accuracy == pytest.approx(summary['student']['test_accuracy'], abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize('stage', [1, 2])
def test_shared_programs_run_a_stage_inside_its_source(
  stage, config_factory, teacher_dir, tmp_path, monkeypatch, compiled_specs
):
  config = tiny_search(config_factory('digits'))
  # The stage under test shares, the other does not ('auto' shares stage 2 of
  # digits-sized searches on CPUs too).
  config.runtime.share_stage1_programs = 'on' if stage == 1 else 'off'
  config.runtime.share_stage2_program = 'on' if stage == 2 else 'off'
  calls = []  # (jobs' specs, inside) per train_many call
  compiled = compiled_specs  # specs of the programs compiled, in order
  compiled_in = []  # those compiled during each train_many call
  real_train_many = evaluator_lib.Evaluator.train_many

  def spy(self, jobs, seed, **kwargs):
    calls.append(([spec for spec, _ in jobs], kwargs.get('inside')))
    before = len(compiled)
    results = real_train_many(self, jobs, seed, **kwargs)
    compiled_in.append(compiled[before:])
    return results

  monkeypatch.setattr(evaluator_lib.Evaluator, 'train_many', spy)
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  experiment.run(config, workdir)
  records = report.read_metrics(workdir)
  assert [r['shared_program'] for r in records] == [r['stage'] == stage for r in records]
  assert len(calls) == len(records)  # one train_many per iteration
  shared = [call for call, r in zip(calls, records) if r['stage'] == stage]
  if stage == 1:
    # Students really trained inside: only switched networks compiled.
    during_stage = [spec for during in compiled_in[: len(shared)] for spec in during]
    assert during_stage and all(spec.switched for spec in during_stage)
  assert [inside for (_, inside), r in zip(calls, records) if r['stage'] != stage] == [None] * 2
  source = shared[0][1]
  assert source is not None and all(inside == source for _, inside in shared)
  # Every student fits its source: widened back to it (stage 2), or the
  # source with layers switched off (stage 1).
  for specs, _ in shared:
    for spec in specs:
      if stage == 2:
        assert padding.widen(spec, source) == source
      else:
        wide, on = padding.with_switches(spec, source)
        assert wide.switched and sum(on) == len(spec.layers) and wide in compiled
  text = open(os.path.join(workdir, 'report.md')).read()
  assert f'runtime.share_stage{stage}_program' in text
  trained = [r for r in records if r['stage'] == stage]
  # Every student that is not degenerate (params 0) trained: it has an accuracy.
  assert all(
    accuracy is not None
    for r in trained
    for accuracy, params in zip(r['accuracies'], r['params'])
    if params
  )
  assert any(params for r in trained for params in r['params'])


@pytest.mark.slow
def test_export_round_trip_gives_identical_logits(tmp_path):
  from n2n_jax import models
  from n2n_jax import zoo

  spec = zoo.get('digits_cnn', (8, 8, 1), 10)
  model = models.build(spec)
  variables = models.init_variables(model, 3, (8, 8, 1))
  export.save_student(str(tmp_path / 's'), spec, variables, {'note': 'x'})
  loaded_model, loaded = export.load_student(str(tmp_path / 's'))
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  np.testing.assert_array_equal(model.apply(variables, x), loaded_model.apply(loaded, x))
  with pytest.raises(FileNotFoundError, match='holds no exported student'):
    export.load_student(str(tmp_path / 'nothing'))


class Crash(Exception):
  pass


@pytest.mark.slow
def test_interrupted_search_resumes_to_the_same_result(
  config_factory, teacher_dir, tmp_path, monkeypatch
):
  config = tiny_search(config_factory('digits'))
  straight = experiment.run(config, workdir_with_teacher(teacher_dir, tmp_path / 'a'))

  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'b')
  real_save = checkpoint_lib.Checkpoints.save
  saves = []

  def crash_after_three(self, step, arrays, meta):
    real_save(self, step, arrays, meta)
    saves.append(step)
    if len(saves) == 3:  # dies in stage 2, after its first iteration's checkpoint
      raise Crash()

  monkeypatch.setattr(checkpoint_lib.Checkpoints, 'save', crash_after_three)
  with pytest.raises(Crash):
    experiment.run(config, workdir)
  monkeypatch.setattr(checkpoint_lib.Checkpoints, 'save', real_save)
  assert len(report.read_metrics(workdir)) == 2  # the third line follows its checkpoint
  resumed = experiment.run(config, workdir)

  assert resumed['student']['spec'] == straight['student']['spec']
  assert resumed['student']['params'] == straight['student']['params']
  assert resumed['student']['test_accuracy'] == pytest.approx(straight['student']['test_accuracy'])
  assert without_timing(report.read_metrics(workdir)) == without_timing(
    report.read_metrics(str(tmp_path / 'a'))
  )


@pytest.mark.slow
def test_resume_with_other_config_is_refused_unless_restart(config_factory, teacher_dir, tmp_path):
  config = tiny_search(config_factory('digits'))
  config.search.stage2_iterations = 0
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  experiment.run(config, workdir)
  config.search.rollouts = 3
  with pytest.raises(search.ResumeMismatch, match='search.rollouts: stored 2, now 3'):
    experiment.run(config, workdir)
  config.search.restart = True
  summary = experiment.run(config, workdir)
  assert all(len(r['rewards']) == 3 for r in report.read_metrics(workdir))
  assert summary['stage2_best'] is None


@pytest.mark.slow
def test_init_from_without_policies_says_so(config_factory, teacher_dir, tmp_path):
  config = tiny_search(config_factory('digits'))
  config.policy.init_from = str(tmp_path / 'empty')
  with pytest.raises(search.ResumeMismatch, match='holds no trained policies'):
    experiment.run(config, workdir_with_teacher(teacher_dir, tmp_path / 'run'))


@pytest.mark.slow
def test_init_from_copies_trained_policy_parameters(config_factory, teacher_dir, tmp_path):
  config = tiny_search(config_factory('digits'))
  config.search.stage2_iterations = 1
  donor = workdir_with_teacher(teacher_dir, tmp_path / 'donor')
  experiment.run(config, donor)
  teacher = teacher_lib.load(donor)
  stage1 = search.removal_stage(config, teacher.spec)
  fresh = search._policy_states(config, stage1, jax.random.key(0), '')
  seeded = search._policy_states(config, stage1, jax.random.key(0), donor)
  trained, _ = checkpoint_lib.Checkpoints(donor).restore(fresh)
  for name in ('removal', 'shrink'):
    for a, b in zip(
      jax.tree_util.tree_leaves(seeded[name].params),
      jax.tree_util.tree_leaves(trained[name].params),
    ):
      np.testing.assert_array_equal(a, b)
    assert any(
      not np.array_equal(b, c)
      for b, c in zip(
        jax.tree_util.tree_leaves(trained[name].params),
        jax.tree_util.tree_leaves(fresh[name].params),
      )
    )
    assert int(seeded[name].num_updates) == 0  # optimiser and baseline start afresh


@pytest.mark.slow
def test_non_finite_policy_loss_stops_with_the_iteration_and_keeps_the_checkpoint(
  config_factory, teacher_dir, tmp_path, monkeypatch
):
  from n2n_jax import reward as reward_lib

  config = tiny_search(config_factory('digits'))
  workdir = workdir_with_teacher(teacher_dir, tmp_path / 'run')
  calls = []

  def reward_then_nan(accuracy, teacher_accuracy, c):
    calls.append(1)
    # Fault injection: the second iteration's rewards are NaN.
    return float('nan') if len(calls) > config.search.rollouts else c * (2 - c)

  monkeypatch.setitem(reward_lib._REWARD_FNS, 'n2n', reward_then_nan)
  with pytest.raises(search.SearchError, match='stage 1 iteration 2: the policy loss is nan'):
    experiment.run(config, workdir)
  assert checkpoint_lib.Checkpoints(workdir).latest_step() == 1
  assert len(report.read_metrics(workdir)) == 1


@pytest.mark.slow
def test_reuse_results_trains_each_architecture_once_and_resumes_exactly(
  config_factory, tmp_path, monkeypatch
):
  # A teacher with three removable layers has only four smaller students, so
  # 12 rollouts must repeat some.
  teacher = S.NetSpec(
    'tiny',
    (8, 8, 1),
    (S.Conv(8, 3, 1, 1), S.ReLU(), S.Conv(8, 3, 1, 1), S.ReLU(), S.Flatten(), S.Dense(10)),
  )
  (tmp_path / 'tiny.json').write_text(S.to_json(teacher))
  config = tiny_search(config_factory('digits'))
  config.teacher.spec_file = str(tmp_path / 'tiny.json')
  config.search.stage1_iterations, config.search.stage2_iterations = 3, 2
  config.search.rollouts = 4
  config.search.reuse_results = True
  trained_keys = []
  real_train_many = evaluator_lib.Evaluator.train_many

  def spy(self, jobs, seed, **kwargs):
    trained_keys.extend(search.architecture_key(spec) for spec, _ in jobs)
    return real_train_many(self, jobs, seed, **kwargs)

  monkeypatch.setattr(evaluator_lib.Evaluator, 'train_many', spy)
  straight = experiment.run(config, str(tmp_path / 'a'))
  records = report.read_metrics(str(tmp_path / 'a'))

  assert len(trained_keys) == len(set(trained_keys))  # no architecture distilled twice
  first_accuracy, reused = {}, 0
  for r in records:
    for text, accuracy, why, was_reused in zip(
      r['specs'], r['accuracies'], r['degenerate'], r['reused']
    ):
      if why is not None:
        assert not was_reused
        continue
      if text in first_accuracy:  # sampled before: its first accuracy, no training
        assert was_reused and accuracy == first_accuracy[text]
        reused += 1
      else:
        assert not was_reused
        first_accuracy[text] = accuracy
  assert reused >= 1, 'the tiny search sampled no architecture twice; nothing was tested'
  assert len(trained_keys) == len(first_accuracy)

  # Known accuracies are checkpointed: a search that dies and resumes reuses
  # exactly what the uninterrupted one did.
  workdir = str(tmp_path / 'b')
  real_save = checkpoint_lib.Checkpoints.save

  def crash_after_two(self, step, arrays, meta):
    real_save(self, step, arrays, meta)
    if step == 2:
      raise Crash()

  monkeypatch.setattr(checkpoint_lib.Checkpoints, 'save', crash_after_two)
  with pytest.raises(Crash):
    experiment.run(config, workdir)
  monkeypatch.setattr(checkpoint_lib.Checkpoints, 'save', real_save)
  resumed = experiment.run(config, workdir)
  assert without_timing(report.read_metrics(workdir)) == without_timing(records)
  assert resumed['student']['spec'] == straight['student']['spec']


def test_policy_update_compiled_in_background_is_the_one_the_search_calls(config_factory):
  config = config_factory('digits')
  teacher = zoo.get('digits_cnn', (8, 8, 1), 10)
  stage = search.removal_stage(config, teacher)
  optimizer = reinforce.make_optimizer(stage.learning_rate)
  update = reinforce.make_update(stage.policy, optimizer, 'removal')
  state = reinforce.PolicyState.create(
    policies.init_policy(stage.policy, jax.random.key(0), stage.features.shape[1]), optimizer
  )
  search._compile_in_background(update, state, stage, rollouts=3).join()  # pylint: disable=protected-access

  actions = np.asarray(
    reinforce.sample_removal(
      stage.policy,
      state.params,
      jnp.asarray(stage.features),
      jnp.asarray(stage.mask),
      jax.random.key(1),
      3,
    )
  )
  # The arguments as the search makes them (converting them compiles helpers).
  args = (
    jnp.asarray(stage.features),
    jnp.asarray(stage.mask),
    jnp.asarray(actions),
    jnp.asarray([0.5, -1.0, 0.25], jnp.float32),
  )
  compiles = []
  listener = lambda event, duration, **_: (
    compiles.append(event) if event.endswith('backend_compile_duration') else None
  )
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    new, metrics = update(state, *args)
    jax.block_until_ready(new)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
  assert bool(metrics['finite']) and int(new.num_updates) == 1
