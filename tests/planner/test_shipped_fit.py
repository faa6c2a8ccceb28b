"""The repository ships the fit of its published data, so a fresh clone plans without refitting (cold start)."""

from __future__ import annotations

from planner import paths
from planner.accuracy import code_hash, fitting_data
from planner.law import fit_version, load_fit


def test_shipped_fit_matches_published_data_and_code(monkeypatch):
    monkeypatch.delenv("CLIPA_HOME", raising=False)  # look at the repository itself
    data = fitting_data(include_runs=False)
    version = fit_version(data.hash(), code_hash())
    path = paths.PACKAGE_ROOT / "results" / "fits" / f"{version}.json"
    assert path.exists(), (
        f"results/fits/{version}.json is missing: run `clipa refit --no-runs` with an empty results/runs/ "
        "and commit the file"
    )
    fit = load_fit(path)
    assert fit.data_hash == data.hash() and fit.code_hash == code_hash()
