"""Work spread over local devices, one thread per device.

The search's students train on several devices at once (runtime.student_devices):
unit i (one student, or a stacked group of them) goes to devices[i % len(devices)],
and each device works through its units in order on a thread of its own,
holding its own copy of the data. A unit's result depends only on the unit, not
on the device or the order, so any number of devices gives the same results.
"""

from __future__ import annotations

import threading


def placement(count: int, devices) -> list:
  """The device of each of `count` units."""
  return [devices[i % len(devices)] for i in range(count)]


def over_devices(units, devices, run) -> None:
  """`run(unit, device)` for every unit, as placed by `placement`, the
  devices concurrently; returns when all are done. If a run raised, the
  first such error (in unit order) is raised here once every device has
  stopped: a device stops at its first error, the others finish their units."""
  placed = placement(len(units), devices)
  if len(devices) == 1 or len(units) <= 1:
    for unit, device in zip(units, placed):
      run(unit, device)
    return

  errors = {}  # unit index -> the exception its run raised

  def work(d):
    for u in range(d, len(units), len(devices)):
      try:
        run(units[u], devices[d])
      except BaseException as e:  # pylint: disable=broad-except  # raised in the caller's thread
        errors[u] = e
        return

  # Daemon threads: a SIGTERM in the main thread ends the process without
  # waiting for students still training (their work is redone on resume).
  threads = [
    threading.Thread(target=work, args=(d,), daemon=True)
    for d in range(min(len(devices), len(units)))
  ]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  if errors:
    raise errors[min(errors)]
