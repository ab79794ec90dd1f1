"""The suite runs on two pytest-xdist workers; a test marked ``exclusive`` runs with no other test beside it.

A real inner pytest run on two workers, with this suite's own conftest: the last file holds a slow test, the
other files quick ones. Marked ``exclusive``, the slow test's interval overlaps none of the others; unmarked
(the control), the other worker runs beside it, so the check can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"

SLOW = """
import time, pytest
from pathlib import Path

{mark}
def test_slow():
    t0 = time.time()
    time.sleep(0.8)
    Path({log!r}).open("a").write(f"slow {{t0}} {{time.time()}}\\n")
"""

QUICK = """
import time, pytest
from pathlib import Path

@pytest.mark.parametrize("i", range(5))
def test_quick(i):
    t0 = time.time()
    time.sleep(0.15)
    Path({log!r}).open("a").write(f"quick {{t0}} {{time.time()}}\\n")
"""


def run_inner(folder: Path, exclusive: bool) -> tuple[tuple[float, float], list[tuple[float, float]]]:
    folder.mkdir()
    log = folder / "intervals.log"
    (folder / "conftest.py").write_text(CONFTEST.read_text())
    (folder / "pytest.ini").write_text("[pytest]\naddopts = -p xdist -n 2 --dist loadfile -p no:cacheprovider\n"
                                       "markers =\n    exclusive: runs alone\n")
    mark = "@pytest.mark.exclusive" if exclusive else ""
    (folder / "test_z_slow.py").write_text(SLOW.format(mark=mark, log=str(log)))
    for name in ("b", "c", "d"):
        (folder / f"test_{name}_quick.py").write_text(QUICK.format(log=str(log)))
    # Only xdist: the installed plugins (hypothesis, ctapipe, ...) cost seconds per worker to load.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--basetemp", str(folder / "tmp"), str(folder)],
                       cwd=folder, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    rows = [line.split() for line in log.read_text().splitlines()]
    slow = [(float(a), float(b)) for kind, a, b in rows if kind == "slow"]
    quick = [(float(a), float(b)) for kind, a, b in rows if kind == "quick"]
    assert len(slow) == 1 and len(quick) == 15, rows
    return slow[0], quick


def overlapping(slow: tuple[float, float], quick: list[tuple[float, float]]) -> int:
    return sum(a < slow[1] and b > slow[0] for a, b in quick)


@pytest.mark.slow
def test_an_exclusive_test_runs_alone_and_an_unmarked_one_does_not(tmp_path):
    slow, quick = run_inner(tmp_path / "exclusive", exclusive=True)
    assert overlapping(slow, quick) == 0, (slow, quick)
    # and not because the others happened to be done: the slow file comes last, so quick tests ran before
    # it, and the other worker still had quick tests left, which waited for it
    assert min(a for a, _ in quick) < slow[0] and max(b for _, b in quick) > slow[1], (slow, quick)
    slow, quick = run_inner(tmp_path / "control", exclusive=False)
    assert overlapping(slow, quick) > 0, (slow, quick)
