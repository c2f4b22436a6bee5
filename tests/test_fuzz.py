"""Hostile inputs, fuzzed: spec JSON, IDX files and --config overrides.

Every case must end with the library's own error (spec.SpecError,
data.DataError, config.ConfigError, or the one-line exit 2 of main.parse_flags)
whose message names what is wrong, or be accepted and then behave: never
another exception type, a hang, or an allocation of the size a lying header
declares. Cases come from fixed seeds (one numpy generator per case, so case i
reproduces alone), and every case is counted in the `fuzz_cases` fixture that
conftest prints at the end of the run.
"""

import contextlib
import gzip
import io
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc

import ml_collections
import numpy as np
import pytest
from absl import flags
from conftest import ROOT
from ml_collections import config_flags

from n2n_jax import config as config_lib
from n2n_jax import data
from n2n_jax import main
from n2n_jax import spec as S
from n2n_jax import zoo

# A case that uses more CPU time than this is a hang for our purposes: the
# largest honest input here is a few hundred KB, and its slowest case (100,001
# layers, refused) takes 0.6 s alone but took 2.05 s late in a full .ci/run
# (a larger heap to garbage-collect). This thread's CPU time, not wall time
# or the whole process's, so that other jobs and other threads (compiles a
# test left running) do not count; what it must catch, an input that expands
# exponentially, would take minutes.
CASE_SECONDS = 10.0


def rng_for(target: int, case: int) -> np.random.Generator:
  return np.random.default_rng([target, case])


def pick(rng, items):
  return items[int(rng.integers(len(items)))]


def deep_list(depth: int):
  value = []
  for _ in range(depth):
    value = [value]
  return value


# --------------------------------------------------------------------------
# Spec JSON

LAYER_NAMES = sorted(S.REGISTRY)


def random_layer(rng, depth=0) -> dict:
  """A layer dict with small random fields; many are valid, some do not fit."""
  kinds = [
    'Conv',
    'Conv',
    'BatchNorm',
    'ReLU',
    'MaxPool',
    'AvgPool',
    'GlobalAvgPool',
    'Dropout',
    'Flatten',
    'Dense',
  ] + (['Residual', 'Concat'] if depth < 2 else [])
  kind = pick(rng, kinds)
  small = lambda lo, hi: int(rng.integers(lo, hi + 1))
  if kind == 'Conv':
    return {
      'type': kind,
      'filters': small(1, 16),
      'kernel': small(1, 5),
      'stride': small(1, 3),
      'padding': small(0, 2),
      'use_bias': bool(rng.integers(2)),
    }
  if kind == 'MaxPool':
    window = small(1, 3)
    return {'type': kind, 'window': window, 'stride': small(1, 3), 'padding': small(0, window)}
  if kind == 'AvgPool':
    return {'type': kind, 'window': small(1, 3), 'stride': small(1, 3)}
  if kind == 'Dropout':
    return {'type': kind, 'rate': pick(rng, [0.0, 0.25, 0.5, 0.99, 1.0])}
  if kind == 'Dense':
    return {'type': kind, 'features': small(1, 20), 'use_bias': bool(rng.integers(2))}
  if kind == 'Residual':
    return {
      'type': kind,
      'main': [random_layer(rng, depth + 1) for _ in range(small(0, 3))],
      'shortcut': [random_layer(rng, depth + 1) for _ in range(small(0, 1))],
    }
  if kind == 'Concat':
    return {
      'type': kind,
      'branches': [
        [random_layer(rng, depth + 1) for _ in range(small(0, 2))] for _ in range(small(1, 3))
      ],
    }
  return {'type': kind}


def random_spec_dict(rng) -> dict:
  layers = [random_layer(rng) for _ in range(int(rng.integers(1, 8)))]
  if rng.random() < 0.5:
    layers += [{'type': 'Flatten'}, {'type': 'Dense', 'features': int(rng.integers(1, 11))}]
  return {
    'name': f'random{int(rng.integers(1000))}',
    'input_shape': [int(rng.integers(1, 17)), int(rng.integers(1, 17)), int(rng.integers(1, 5))],
    'layers': layers,
  }


def seed_spec_dict(rng) -> dict:
  fire = S.NetSpec(
    'fire',
    (9, 9, 3),
    (
      S.Conv(8, 3, 1, 1),
      S.ReLU(),
      S.Concat(((S.Conv(4, 1),), (S.Conv(4, 3, 1, 1), S.BatchNorm()), ())),
      S.MaxPool(),
      S.Dropout(0.3),
      S.Flatten(),
      S.Dense(5),
    ),
  )
  choice = int(rng.integers(5))
  if choice == 0:
    return S.to_dict(zoo.get('digits_cnn', (8, 8, 1), 10))
  if choice == 1:
    return S.to_dict(zoo.get('resnet18', (32, 32, 3), 10))
  if choice == 2:
    return S.to_dict(fire)
  return random_spec_dict(rng)


def hostile_json_value(rng):
  """Values that JSON can carry, chosen to break naive type and range checks."""
  values = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    2**31 - 1,
    2**31,
    2**63,
    -(2**63),
    10**30,
    10**400,
    1.5,
    0.0,
    -0.0,
    float('nan'),
    float('inf'),
    -float('inf'),
    1e308,
    5e-324,
    '',
    '3',
    'Conv',
    'ReLU',
    'é',
    '\u202e\u0000',
    '\ud800',
    'x' * 100_000,
    [],
    [1, 2, 3],
    [[]],
    [8, 8, 1],
    [0] * 10_000,
    {},
    {'type': 'ReLU'},
    {'type': 'Conv', 'filters': 4},
    {'type': None},
    {'': ''},
  ]
  roll = rng.random()
  if roll < 0.1:
    return deep_list(int(rng.integers(2, 400)))
  if roll < 0.15:
    return random_layer(rng)
  return pick(rng, values)


def all_paths(node, prefix=()):
  yield prefix
  if len(prefix) > 40:  # an inserted hostile value can nest thousands deep
    return
  if isinstance(node, dict):
    for key, value in node.items():
      yield from all_paths(value, prefix + (key,))
  elif isinstance(node, list):
    for i, value in enumerate(node):
      yield from all_paths(value, prefix + (i,))


def node_at(root, path):
  for key in path:
    root = root[key]
  return root


def where_of(path) -> str:
  """What spec.from_dict calls the location `path` (a key path into the dict):
  'layers[3].main[1]' for a layer, the top-level field's name otherwise."""
  if not path:
    return ''
  if path[0] != 'layers' or len(path) < 2:
    return str(path[0])
  where, i = f'layers[{path[1]}]', 2
  while i < len(path):
    if path[i] in ('main', 'shortcut') and i + 1 < len(path):
      where, i = f'{where}.{path[i]}[{path[i + 1]}]', i + 2
    elif path[i] == 'branches' and i + 2 < len(path):
      where, i = f'{where}.branches[{path[i + 1]}][{path[i + 2]}]', i + 3
    else:
      break
  return where


def mutate_spec_dict(rng, d, hostile=hostile_json_value):
  """One random change to `d`, in place; returns (kind, text the error must contain)."""
  paths = list(all_paths(d))[1:]
  kind = pick(
    rng, ['replace', 'replace', 'replace', 'delete', 'add_key', 'retype', 'insert', 'nest']
  )
  if kind == 'replace':
    path = pick(rng, paths)
    node_at(d, path[:-1])[path[-1]] = hostile(rng)
    return kind, where_of(path)
  if kind == 'delete':
    path = pick(rng, paths)
    parent = node_at(d, path[:-1])
    del parent[path[-1]]
    # A deleted list item leaves a valid list; a deleted field is named.
    return kind, where_of(path if isinstance(parent, dict) else ())
  if kind == 'add_key':
    dicts = [p for p in [()] + paths if isinstance(node_at(d, p), dict)]
    path = pick(rng, dicts)
    key = pick(rng, ['Type', 'filter', 'é', '', '\u0000', 'type ', 'layer', 'k' * 500])
    node_at(d, path)[key] = hostile(rng)
    return kind, where_of(path) if path else 'unknown field'
  if kind == 'retype':
    layers = [p for p in paths if isinstance(node_at(d, p), dict) and 'type' in node_at(d, p)]
    if not layers:
      return 'none', ''
    path = pick(rng, layers)
    node_at(d, path)['type'] = pick(rng, LAYER_NAMES + ['conv', 'Linear', '', ' ReLU', 'Ⅽonv'])
    return kind, where_of(path)
  if kind == 'insert':
    lists = [p for p in paths if p and p[0] == 'layers' and isinstance(node_at(d, p), list)]
    lists.append(('layers',))
    path = pick(rng, lists)
    target = node_at(d, path)
    index = int(rng.integers(len(target) + 1))
    target.insert(index, random_layer(rng) if rng.random() < 0.5 else hostile(rng))
    return kind, where_of(path + (index,))
  depth = int(rng.integers(1, 80))  # 'nest'
  layers = d['layers']
  for _ in range(depth):
    layers = [{'type': 'Residual', 'main': layers}]
  d['layers'] = layers
  return kind, f'nested more than {S.MAX_DEPTH} deep' if depth > S.MAX_DEPTH else ''


def mutate_spec_text(rng, text: str):
  """Damage JSON text the way files get damaged; returns str or bytes."""
  kind = pick(rng, ['flip', 'flip', 'truncate', 'token', 'bits', 'deep', 'bigint', 'encoding'])
  if kind == 'flip':
    chars = list(text)
    for _ in range(int(rng.integers(1, 6))):
      chars[int(rng.integers(len(chars)))] = chr(
        pick(
          rng,
          [int(rng.integers(32, 127)), int(rng.integers(0, 32)), int(rng.integers(128, 0x3000))],
        )
      )
    return ''.join(chars)
  if kind == 'truncate':
    return text[: int(rng.integers(len(text)))]
  if kind == 'token':
    at = int(rng.integers(len(text) + 1))
    token = pick(
      rng,
      [
        'NaN',
        '-Infinity',
        '1e999',
        '-',
        '"',
        '{',
        ']',
        ',',
        ':',
        '\\u0000',
        '\\ud800',
        '9' * 5000,
        'true',
        'null',
        '//',
        '\x00',
        '[' * 5000,
      ],
    )
    return text[:at] + token + text[at:]
  if kind == 'bits':
    raw = bytearray(text.encode('utf-8'))
    for _ in range(int(rng.integers(1, 4))):
      raw[int(rng.integers(len(raw)))] ^= 1 << int(rng.integers(8))
    return bytes(raw)
  if kind == 'deep':
    n = int(pick(rng, [10, 100, 1000, 10_000, 200_000]))
    opener, closer = pick(rng, [('[', ']'), ('{"a":', '}')])
    return opener * n + ('1' if opener != '[' else '') + closer * n
  if kind == 'bigint':
    digits = '9' * int(pick(rng, [20, 400, 4300, 4301, 50_000]))
    return text.replace('1', digits, 1) if '1' in text else digits
  encoding = pick(rng, ['utf-8-sig', 'utf-16', 'utf-32', 'latin-1', 'cp1252'])
  try:
    return text.encode(encoding)
  except UnicodeEncodeError:
    return text.encode('utf-8', 'surrogatepass')


def check_spec(load, where=''):
  """Runs one spec case; returns its outcome. Rejections must be SpecError
  naming `where`; accepted specs must survive shape inference (or be refused
  with a SpecError naming a layer) and round-trip through JSON."""
  start = time.thread_time()
  try:
    spec = load()
  except S.SpecError as error:
    message = str(error)
    assert type(error) is S.SpecError
    assert message and len(message) < 2_000, message[:3000]
    assert where in message, (where, message)
    outcome = 'rejected with SpecError'
  else:
    assert isinstance(spec, S.NetSpec) and len(spec.input_shape) == 3
    try:
      stats = S.layer_stats(spec)
      params, flops = S.param_count(spec), S.flops(spec)
    except S.SpecError as error:
      assert type(error) is S.SpecError
      assert str(error).startswith('layers['), str(error)
      outcome = 'refused by shape inference'
    else:
      assert params == sum(s.params for s in stats) >= 0
      assert flops == sum(s.flops for s in stats) >= 0
      assert all(isinstance(s.params, int) and isinstance(s.flops, int) for s in stats)
      outcome = 'valid'
    assert S.from_json(S.to_json(spec)) == spec
  assert time.thread_time() - start < CASE_SECONDS
  return outcome


def test_fuzz_spec_json(fuzz_cases):
  for case in range(700):
    rng = rng_for(1, case)
    d = seed_spec_dict(rng)
    try:
      if case % 3 == 2:  # text-level damage
        text = mutate_spec_text(rng, json.dumps(d, ensure_ascii=bool(rng.integers(2))))
        outcome = check_spec(lambda: S.from_json(text))
      else:
        kind, where = mutate_spec_dict(rng, d) if case % 10 else ('none', '')
        text = json.dumps(d, ensure_ascii=bool(rng.integers(2)))
        outcome = check_spec(lambda: S.from_json(text), where)
        if kind == 'none':
          assert outcome != 'rejected with SpecError'
    except AssertionError as error:
      raise AssertionError(f'spec JSON case {case}: {error}') from error
    fuzz_cases['spec JSON'][outcome] += 1


def hostile_python_value(rng):
  """What from_dict can get from Python callers beyond JSON's types."""
  values = [
    (8, 8, 1),
    {8, 1},
    b'conv',
    bytearray(b'8'),
    1 + 2j,
    np.int64(8),
    np.float32(0.5),
    object(),
    Ellipsis,
    range(3),
    frozenset(),
    (lambda: 0),
    {1: 2},
    {(1,): 2},
    {None: 'x'},
    deep_list(5000),
    [{'type': 'ReLU'}] * 1000,
    10**5000,
    -(10**5000),
    [10**5000, 1, 1],
  ]
  return pick(rng, values) if rng.random() < 0.5 else hostile_json_value(rng)


def test_fuzz_spec_dicts(fuzz_cases):
  for case in range(300):
    rng = rng_for(2, case)
    d = seed_spec_dict(rng)
    kind, where = mutate_spec_dict(rng, d, hostile_python_value)
    if case % 7 == 0:  # a non-string key, which JSON cannot carry
      layer = pick(rng, [p for p in all_paths(d) if isinstance(node_at(d, p), dict)])
      node_at(d, layer)[pick(rng, [1, None, (1, 2), 2.5])] = 0
      where = ''
    try:
      outcome = check_spec(lambda: S.from_dict(d), where)
    except AssertionError as error:
      raise AssertionError(f'spec dict case {case} ({kind}): {error}') from error
    fuzz_cases['spec dicts'][outcome] += 1

  # Shapes Python can build and JSON cannot: shared sub-dicts nest exponentially.
  shared = {'type': 'ReLU'}
  for _ in range(S.MAX_DEPTH - 1):
    shared = {'type': 'Residual', 'main': [shared, shared], 'shortcut': [shared]}
  targeted = [
    ({'input_shape': [4, 4, 1], 'layers': [shared]}, f'more than {S.MAX_LAYERS:,} layers'),
    (
      {'input_shape': [4, 4, 1], 'layers': [{'type': 'ReLU'}] * (S.MAX_LAYERS + 1)},
      f'more than {S.MAX_LAYERS:,} layers',
    ),
    ({'input_shape': [4, 4, 1], 'layers': deep_list(50_000)}, 'layers[0]'),
    ({'input_shape': [4, 4, 1], 'layers': [], 1: 2, 'x': 3}, 'unknown field'),
    ({'input_shape': [4, 4, 1], 'layers': [{'type': 'ReLU', 1: 2, 'x': 3}]}, 'layers[0]'),
    (None, 'JSON object'),
    ([], 'JSON object'),
    ('{}', 'JSON object'),
  ]
  for d, where in targeted:
    assert check_spec(lambda: S.from_dict(d), where) == 'rejected with SpecError'
    fuzz_cases['spec dicts']['rejected with SpecError'] += 1


def test_absurd_but_legal_sizes_are_counted_without_allocating():
  big = S.MAX_SIZE
  spec = S.from_json(
    json.dumps(
      {
        'input_shape': [big, big, 3],
        'layers': [
          {'type': 'Conv', 'filters': big, 'kernel': 3, 'padding': 1},
          {'type': 'GlobalAvgPool'},
          {'type': 'Flatten'},
          {'type': 'Dense', 'features': big},
        ],
      }
    )
  )
  tracemalloc.start()
  try:
    params, flops = S.param_count(spec), S.flops(spec)
    S.validate(spec)
    features = S.layer_features(spec)  # sizes become floats here
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  assert params == 9 * 3 * big + big + big * big + big
  assert flops > big**3 and len(features) == 4
  assert peak < 2**20
  for field, value in [
    ('input_shape', [big + 1, 1, 1]),
    ('filters', big + 1),
    ('kernel', 10**400),
    ('features', -(2**63)),
  ]:
    d = {
      'input_shape': [8, 8, 1],
      'layers': [
        {'type': 'Conv', 'filters': 4},
        {'type': 'Flatten'},
        {'type': 'Dense', 'features': 2},
      ],
    }
    if field == 'input_shape':
      d['input_shape'] = value
    else:
      d['layers'][2 if field == 'features' else 0][field] = value
    with pytest.raises(S.SpecError, match=field) as info:
      S.from_json(json.dumps(d))
    assert type(info.value) is S.SpecError
  with pytest.raises(S.SpecError, match='beyond the limit'):
    S.validate(S.NetSpec('py', (8, 8, 1), (S.Conv(10**400), S.Flatten(), S.Dense(2))))


def test_fuzz_spec_files(fuzz_cases, tmp_path):
  """The user's path to a spec: --config.teacher.spec_file, read by teacher_spec."""
  config = config_lib.base_config()
  good = S.to_json(zoo.get('digits_cnn', (8, 8, 1), 10))
  big = tmp_path / 'big.json'
  big.write_bytes(b' ' * (config_lib.MAX_SPEC_FILE_BYTES + 1))
  special = [str(tmp_path), str(tmp_path / 'missing.json'), str(big)]
  special += [p for p in ('/dev/zero', '/dev/urandom') if os.path.exists(p)]
  for case in range(80 + len(special)):
    rng = rng_for(3, case)
    if case < len(special):
      path = special[case]
    else:
      path = str(tmp_path / f'spec{case}.json')
      payload = good if case % 4 == 0 else mutate_spec_text(rng, good)
      if case % 9 == 0:
        payload = rng.bytes(int(rng.integers(0, 3000)))
      with open(path, 'wb') as f:
        f.write(payload.encode('utf-8', 'surrogatepass') if isinstance(payload, str) else payload)
    config.teacher.spec_file = path
    start = time.thread_time()
    try:
      spec = config_lib.teacher_spec(config, (8, 8, 1), 10)
    except (config_lib.ConfigError, S.SpecError) as error:
      assert type(error) in (config_lib.ConfigError, S.SpecError)
      assert path in str(error), str(error)
      outcome = f'rejected with {type(error).__name__}'
    else:
      assert S.output_shape(spec) == (10,) and spec.input_shape == (8, 8, 1)
      outcome = 'valid'
    assert time.thread_time() - start < CASE_SECONDS
    fuzz_cases['spec files'][outcome] += 1


# --------------------------------------------------------------------------
# IDX files


def idx_bytes(array, magic=None, dims=None):
  array = np.asarray(array, dtype=np.uint8)
  dims = array.shape if dims is None else dims
  magic = (0x800 | array.ndim) if magic is None else magic
  return struct.pack('>I', magic) + struct.pack(f'>{len(dims)}I', *dims) + array.tobytes()


ABSURD_DIMS = [0, 1, 2, 255, 2**16, 2**31 - 1, 2**31, 2**32 - 1]
ODD_MAGICS = [
  0,
  0xFFFFFFFF,
  0x801,
  0x803,
  0x802,
  0x804,
  0x8FF,
  0x900,
  0x80B,
  0x80D,
  0x80E,
  0x1F8B0803,
  0x00000C03,
  0x01000803,
]


def damage_payload(rng, payload: bytes):
  """One way an IDX file goes bad (or 'none'); returns (kind, bytes)."""
  kind = pick(
    rng, ['none', 'flip', 'flip', 'truncate', 'extend', 'dims', 'dims', 'magic', 'garbage', 'empty']
  )
  raw = bytearray(payload)
  if kind == 'flip':
    for _ in range(int(rng.integers(1, 4))):
      # Half the flips land in the header, where they change what is declared.
      at = (
        int(rng.integers(min(16, len(raw)))) if rng.random() < 0.5 else int(rng.integers(len(raw)))
      )
      raw[at] ^= 1 << int(rng.integers(8))
  elif kind == 'truncate':
    del raw[int(rng.integers(len(raw))) :]
  elif kind == 'extend':
    raw += rng.bytes(int(rng.integers(1, 50)))
  elif kind == 'dims':
    rank = raw[3]
    at = 4 + 4 * int(rng.integers(rank))
    raw[at : at + 4] = struct.pack('>I', pick(rng, ABSURD_DIMS))
  elif kind == 'magic':
    raw[:4] = struct.pack('>I', pick(rng, ODD_MAGICS))
  elif kind == 'garbage':
    raw = bytearray(rng.bytes(int(rng.integers(0, 64))))
  elif kind == 'empty':
    raw = bytearray()
  return kind, bytes(raw)


def package(rng, payload: bytes, path: str):
  """Writes `payload` raw or gzipped, sometimes with a damaged or lying wrapper."""
  kind = pick(
    rng, ['raw', 'raw', 'gz', 'gz', 'gz-damaged', 'gz-trailing', 'gz-unsuffixed', 'raw-as-gz']
  )
  if kind in ('raw', 'gz-unsuffixed'):
    blob = payload if kind == 'raw' else gzip.compress(payload, mtime=0)
  else:
    path += '.gz'
    blob = payload if kind == 'raw-as-gz' else bytearray(gzip.compress(payload, mtime=0))
    if kind == 'gz-damaged':
      if rng.random() < 0.5:
        del blob[int(rng.integers(len(blob))) :]
      else:
        blob[int(rng.integers(len(blob)))] ^= 1 << int(rng.integers(8))
    elif kind == 'gz-trailing':
      blob += rng.bytes(int(rng.integers(1, 40)))
  with open(path, 'wb') as f:
    f.write(bytes(blob))
  return kind, path


def random_idx_array(rng):
  if rng.random() < 0.5:
    return rng.integers(0, 10, int(rng.integers(1, 40)), dtype=np.uint8)
  shape = (int(rng.integers(1, 20)), int(rng.integers(1, 9)), int(rng.integers(1, 9)))
  return rng.integers(0, 256, shape, dtype=np.uint8)


def outcome_of(call, path):
  try:
    return call()
  except data.DataError as error:
    assert type(error) is data.DataError
    assert path in str(error), str(error)
    return error


def test_fuzz_idx_files(fuzz_cases, tmp_path):
  tracemalloc.start()
  try:
    for case in range(450):
      rng = rng_for(4, case)
      array = random_idx_array(rng)
      damage, payload = damage_payload(rng, idx_bytes(array))
      wrapper, path = package(rng, payload, str(tmp_path / f'case{case}'))
      tracemalloc.reset_peak()
      start = time.thread_time()
      header = outcome_of(lambda: data.read_idx_header(path), path)
      result = outcome_of(lambda: data.read_idx(path), path)
      _, peak = tracemalloc.get_traced_memory()
      what = f'IDX case {case} ({damage}, {wrapper})'
      assert time.thread_time() - start < CASE_SECONDS, what
      # Never the size a header declares: the files are at most a few KB.
      assert peak < 4 * 2**20, (what, peak)
      if isinstance(result, np.ndarray):
        assert not isinstance(header, Exception), what
        assert result.dtype == np.uint8 and result.shape == header, what
        if damage == 'none':
          np.testing.assert_array_equal(result, array)
        outcome = 'valid'
      else:
        if damage == 'none' and wrapper in ('raw', 'gz'):
          raise AssertionError(f'{what}: an intact file was rejected: {result}')
        outcome = 'rejected with DataError'
      fuzz_cases['IDX files'][outcome] += 1
  finally:
    tracemalloc.stop()


def test_fuzz_idx_folders(fuzz_cases, tmp_path):
  """data.source='idx' end to end: describe_source and load on damaged folders."""
  for case in range(160):
    rng = rng_for(5, case)
    folder = str(tmp_path / f'folder{case}')
    os.makedirs(folder)
    rows, cols, classes = int(rng.integers(1, 7)), int(rng.integers(1, 7)), int(rng.integers(2, 6))
    counts = {'train': int(rng.integers(10, 40)), 'test': int(rng.integers(1, 12))}
    arrays = {}
    for split in ('train', 'test'):
      arrays[f'{split}_images'] = rng.integers(0, 256, (counts[split], rows, cols), np.uint8)
      labels = np.arange(counts[split]) % classes
      arrays[f'{split}_labels'] = rng.permutation(labels).astype(np.uint8)
    trouble = pick(
      rng,
      [
        'none',
        'none',
        'file',
        'file',
        'count',
        'swap',
        'shape',
        'label',
        'one_class',
        'tiny',
        'missing',
        'directory',
        'absurd',
      ],
    )
    victim = pick(rng, sorted(data.IDX_FILES))
    payloads = {role: idx_bytes(a) for role, a in arrays.items()}
    if trouble == 'file':
      trouble, payloads[victim] = damage_payload(rng, payloads[victim])
    elif trouble == 'count':
      role = victim.replace('images', 'labels')
      payloads[role] = idx_bytes(arrays[role][:-1])
    elif trouble == 'swap':
      split = victim.split('_')[0]
      payloads[f'{split}_images'], payloads[f'{split}_labels'] = (
        payloads[f'{split}_labels'],
        payloads[f'{split}_images'],
      )
    elif trouble == 'shape':
      payloads['test_images'] = idx_bytes(np.zeros((counts['test'], rows + 1, cols), np.uint8))
    elif trouble == 'label':
      labels = arrays['test_labels'].copy()
      labels[0] = pick(rng, [classes, 255])
      payloads['test_labels'] = idx_bytes(labels)
    elif trouble == 'one_class':
      payloads['train_labels'] = idx_bytes(np.zeros(counts['train'], np.uint8))
    elif trouble == 'tiny':
      payloads['train_images'] = idx_bytes(arrays['train_images'][:1])
      payloads['train_labels'] = idx_bytes(arrays['train_labels'][:1])
    elif trouble == 'absurd':
      # The header's count matches the labels; its image size cannot be stored.
      payloads['train_images'] = idx_bytes(
        arrays['train_images'], dims=(counts['train'], 2**31, 2**31)
      )
    for role, base in data.IDX_FILES.items():
      path = os.path.join(folder, base)
      if role == victim and trouble == 'missing':
        continue
      if role == victim and trouble == 'directory':
        os.makedirs(path)
        continue
      if rng.random() < 0.3:
        with gzip.open(path + '.gz', 'wb') as f:
          f.write(payloads[role])
      else:
        with open(path, 'wb') as f:
          f.write(payloads[role])

    config = data.default_data_config()
    config.source, config.path = 'idx', folder
    start = time.thread_time()
    described, loaded = None, None
    for name, call in (('describe', data.describe_source), ('load', data.load)):
      try:
        result = call(config)
      except data.DataError as error:
        assert type(error) is data.DataError
        assert folder in str(error) or 'data.' in str(error), (case, trouble, str(error))
      else:
        if name == 'describe':
          described = result
        else:
          loaded = result
    assert time.thread_time() - start < 5 * CASE_SECONDS, (case, trouble)
    what = f'IDX folder case {case} ({trouble})'
    if trouble == 'none':
      assert loaded is not None, what
    # What describe_source reads (the training labels and the training images'
    # header) shows these; it must not hand on a shape or class count from them.
    if (
      trouble in ('one_class', 'absurd')
      or trouble in ('count', 'swap', 'missing', 'directory')
      and victim.startswith('train')
    ):
      assert described is None, (what, victim, described)
    if loaded is not None:
      # Whatever load accepts, describe (which reads less) accepts the same way.
      assert described == (loaded.input_shape, loaded.num_classes), what
      n_train = len(loaded.train_labels) + len(loaded.val_labels)
      train_labels = data._idx_files(folder)['train_labels']  # pylint: disable=protected-access
      assert n_train == len(data.read_idx(train_labels)), what
      if trouble == 'none':  # a flipped byte may leave a valid file with other contents
        assert loaded.input_shape == (rows, cols, 1) and loaded.num_classes == classes, what
        assert n_train == counts['train'] and len(loaded.test_labels) == counts['test'], what
      assert np.isfinite(np.asarray(loaded.train_images)).all(), what
      outcome = 'valid'
    elif described is not None:
      outcome = 'described, then load rejected with DataError'
    else:
      outcome = 'rejected with DataError'
    fuzz_cases['IDX folders'][outcome] += 1


# --------------------------------------------------------------------------
# Config overrides


def leaf_fields(config, prefix=''):
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      yield from leaf_fields(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}', value


FIELDS = dict(leaf_fields(config_lib.base_config()))
SECTIONS = ['data', 'teacher', 'search', 'policy', 'distill', 'constraints', 'final', 'runtime']
BOGUS_PATHS = [
  'nosuch',
  'teacher.nme',
  'teacher.name.x',
  'seed.x',
  'a.b.c',
  'Teacher.name',
  'teacher.input_shape.0',
  'é',
  'data.source.',
  'teacher..name',
]
HOSTILE_VALUES = [
  '0',
  '1',
  '-1',
  '2',
  '1.5',
  'nan',
  'inf',
  '-inf',
  '1e400',
  '-0',
  '0x10',
  '1_000',
  '9' * 30,
  '9' * 5000,
  '',
  ' ',
  'None',
  'True',
  'true',
  'false',
  'yes',
  "'quoted'",
  'é',
  '\u202e',
  'a,b',
  '(1,2,3)',
  "(1,'a',3)",
  '()',
  '(0.5,)',
  '(nan,)',
  "(float('nan'),)",
  '(True,)',
  '[1,2]',
  '{}',
  "{'name': 'vgg11'}",
  '{1,2}',
  '1j',
  '(1j,)',
  '(1e999,)',
  '(-1,)',
  '(2**31,)',
  '((1,),2,3)',
  '~' * 5000 + '1',
  '(' * 300 + ')' * 300,
  '[' * 150 + ']' * 150,
  '1j+' * 20_000 + '1',
  '{[1]: 2}',
  'b"abc"',
  'lambda: 0',
  '__import__("os")',
  'sgd',
  'describe',
  'idx',
  'folder',
  'conv4',
  '/nonexistent',
  '--config.mode=x',
  '\n',
]


def typed_value(rng, default) -> str:
  """A value of the field's own kind, so a fair share of cases are valid."""
  if isinstance(default, bool):
    return pick(rng, ['True', 'False', 'true', 'false'])
  if isinstance(default, int):
    return str(pick(rng, [0, 1, 2, 5, 100, -3, 2**31 - 1, 2**31, 2**63 - 1, 2**63]))
  if isinstance(default, float):
    return str(pick(rng, [0.0, 1e-9, 0.05, 0.5, 0.9, 1.0, 3.0, 1e308, -0.5]))
  if isinstance(default, tuple):
    return pick(rng, ['()', '(1,)', '(5, 10)', '(0.5, 1.0)', '(8, 8, 1)', '(28, 28, 1)'])
  return pick(
    rng,
    [
      '',
      'digits',
      'compress',
      'describe',
      'sgd',
      'adam',
      'n2n',
      'ema',
      'reinforce',
      'scratch',
      'poly',
      'auto',
      'digits_cnn',
      'conv4',
    ],
  )


def random_override(rng):
  roll = rng.random()
  if roll < 0.8:
    path = pick(rng, sorted(FIELDS))
  elif roll < 0.9:
    path = pick(rng, SECTIONS)
  else:
    path = pick(rng, BOGUS_PATHS)
  value = (
    typed_value(rng, FIELDS[path])
    if path in FIELDS and rng.random() < 0.5
    else pick(rng, HOSTILE_VALUES)
  )
  form = rng.random()
  if form < 0.08:
    return path, f'--config.{path}'  # the boolean form: no value
  if form < 0.12:
    return path, f'--noconfig.{path}'
  return path, f'--config.{path}={value}'


def parse_like_main(argv):
  """main.parse_flags and main.loaded_config on a fresh FlagValues; returns
  (config or None, exit code or None, stderr)."""
  flag_values = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file(
    'config',
    None,
    'Experiment config file.',
    flag_values=flag_values,
    lock_config=True,
    sys_argv=argv,
  )
  flags.DEFINE_string('workdir', None, 'Folder for this run.', flag_values=flag_values)
  stderr = io.StringIO()
  with contextlib.redirect_stderr(stderr):
    try:
      main.parse_flags(argv, flag_values)
      return main.loaded_config(config_flag), None, stderr.getvalue()
    except SystemExit as exit_:
      return None, exit_.code, stderr.getvalue()


# ml_collections loads configs/*.py with the deprecated load_module().
@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
def test_fuzz_config_overrides(fuzz_cases):
  for case in range(320):
    rng = rng_for(6, case)
    overrides = [random_override(rng) for _ in range(int(rng.integers(1, 4)))]
    argv = ['n2n_jax.main', '--config=configs/digits.py'] + [arg for _, arg in overrides]
    what = f'override case {case}: {[arg[:80] for _, arg in overrides]}'
    start = time.thread_time()
    config, code, stderr = parse_like_main(argv)
    if config is None:
      lines = stderr.splitlines()
      assert code == 2, (what, code, stderr[:500])
      assert len(lines) == 2 and lines[0].startswith('error: '), (what, stderr[:500])
      assert lines[1].startswith('See --help') and 'Traceback' not in stderr, what
      assert len(lines[0]) <= 7 + main._MAX_MESSAGE_CHARS, what  # pylint: disable=protected-access
      # The line names the flag (or, for a path ml_collections cannot follow, the path).
      assert 'config' in lines[0] or any(path in lines[0] for path, _ in overrides), (
        what,
        lines[0],
      )
      outcome = 'exit 2 at parse'
    else:
      try:
        config_lib.validate(config)
      except config_lib.ConfigError as error:
        assert type(error) is config_lib.ConfigError
        sections = {path.split('.')[0] for path, _ in overrides}
        assert any(section in str(error) for section in sections), (what, str(error))
        outcome = 'rejected with ConfigError'
      else:
        # Valid means usable: finite numbers only (stored run origins are JSON).
        json.dumps(config.to_dict(), default=list, allow_nan=False)
        outcome = 'valid'
    assert time.thread_time() - start < CASE_SECONDS, what
    fuzz_cases['config overrides'][outcome] += 1


@pytest.mark.filterwarnings('ignore:the load_module:DeprecationWarning')
def test_every_numeric_field_refuses_nan_and_negative_values(fuzz_cases):
  """Not drawn at random: every number in base_config(), each way it breaks.
  Negative, NaN and infinite values must all be refused naming the field; a
  2**64 may be fine (a seed, a cap on examples) but must not pass unless valid."""
  numeric = [
    path
    for path, default in sorted(FIELDS.items())
    if isinstance(default, (int, float)) and not isinstance(default, bool)
  ]
  assert len(numeric) > 30
  for path in numeric:
    for value in ['-1', '-1e-300', 'nan', 'inf', '-inf', '1e400', str(2**64)]:
      config, _, stderr = parse_like_main(
        ['n2n_jax.main', '--config=configs/digits.py', f'--config.{path}={value}']
      )
      if config is None:  # e.g. an int field given a float: absl's one line names it
        assert f'--config.{path}={value}' in stderr, stderr
        outcome = 'exit 2 at parse'
      else:
        try:
          config_lib.validate(config)
        except config_lib.ConfigError as error:
          assert type(error) is config_lib.ConfigError and path in str(error), str(error)
          outcome = 'rejected with ConfigError'
        else:
          assert value == str(2**64), f'--config.{path}={value} passed validation'
          json.dumps(config.to_dict(), allow_nan=False)
          outcome = 'valid'
      fuzz_cases['config overrides'][outcome] += 1


@pytest.mark.slow
@pytest.mark.parametrize(
  'override, message',
  [
    (
      '--config.teacher.input_shape=' + '~' * 5000 + '1',
      'error: --config.teacher.input_shape is nested too deeply',
    ),
    ('--config.nosuch=1', "error: --config.nosuch: the config has no field 'nosuch'"),
  ],
)
def test_cli_hostile_override_is_one_line(override, message):
  proc = subprocess.run(
    [sys.executable, '-m', 'n2n_jax.main', '--config=configs/digits.py', override],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 2
  assert proc.stderr.startswith(message) and 'Traceback' not in proc.stderr


def test_folder_image_size_is_bounded_before_any_allocation():
  config = data.default_data_config()
  config.source, config.path = 'folder', '/nonexistent'
  for size in (data.MAX_IMAGE_SIZE + 1, 2**31, 2**64):
    config.image_size = size
    with pytest.raises(data.DataError, match=f'data.image_size={size} is over the limit'):
      data.validate_data_config(config)
  config.image_size = data.MAX_IMAGE_SIZE
  data.validate_data_config(config)  # the folder is only looked at when loading
