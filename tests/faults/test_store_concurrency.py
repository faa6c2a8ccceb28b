"""Scenario 5: the results store under concurrency. Eight processes write 50 records each at the same moment
(``planner.runs.write_result``, distinct run ids from distinct seeds, ~3 KB each so a torn write would show); then
every one of the 400 records is readable (``planner.runs.read_runs``), none is corrupt, no temporary file is
left, and the fit's loader (``planner.results.load_runs``/``load_results``) sees all 400 rows. A second round has
the eight writers rewrite the same 50 run ids at once (same run = same file): still one readable record per run."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import HERE, REPO, clipa_env, leftovers

from planner.runs import read_runs

WRITERS, EACH = 8, 50


def _write_all(runs, tmp_path, home, offsets):
    go = tmp_path / f"go-{time.monotonic_ns()}"
    procs = [subprocess.Popen([sys.executable, str(HERE / "_writer_worker.py"), str(runs), str(off), str(EACH),
                               str(go)], cwd=REPO, env=clipa_env(home), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for off in offsets]
    time.sleep(0.5)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        assert out.strip() == str(EACH)


def test_eight_writers_400_records(tmp_path, isolated_home):
    runs = isolated_home / "results" / "runs"
    _write_all(runs, tmp_path, isolated_home, [w * EACH for w in range(WRITERS)])
    results, problems = read_runs(runs)
    assert problems == []
    assert len(results) == WRITERS * EACH == len(list(runs.glob("*.json")))
    assert sorted(r.result.spec.seed for r in results) == list(range(WRITERS * EACH))
    assert leftovers(runs) == [] and not list(runs.glob(".*"))

    from planner import results as fit_results

    rows = fit_results.load_runs()  # CLIPA_HOME's results/runs: what refit/plan read
    assert len(rows) == WRITERS * EACH and rows["top1"].notna().all()
    assert len(fit_results.load_results()) == len(fit_results.load_published()) + WRITERS * EACH

    # all eight rewrite the same 50 runs at once: last writer wins, one whole record per run
    _write_all(runs, tmp_path, isolated_home, [0] * WRITERS)
    results, problems = read_runs(runs)
    assert problems == [] and len(results) == WRITERS * EACH
    assert leftovers(runs) == [] and not list(runs.glob(".*"))


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """SIGKILL between the temporary's creation and its rename leaves ``.NAME.HOST.PID.XXXX.tmp`` behind (no clean-up
    runs); the next write of the same file removes it when that process is gone, and never touches a live
    writer's."""
    import os
    import signal

    from planner.store import _host, atomic_write_text

    target = tmp_path / "abc.json"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        orphan = tmp_path / f".abc.json.{_host()}.{dead.pid}.x1y2.tmp"
        live = tmp_path / f".abc.json.{_host()}.{child.pid}.z3w4.tmp"
        other_host = tmp_path / f".abc.json.elsewhere-7.{dead.pid}.q5r6.tmp"
        for p in (orphan, live, other_host):
            p.write_text("{half")
        atomic_write_text(target, '{"ok": 1}')
        assert target.read_text() == '{"ok": 1}'
        assert not orphan.exists() and live.exists() and other_host.exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
