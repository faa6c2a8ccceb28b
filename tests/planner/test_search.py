"""Candidate search: the vectorised pricing and features agree with the one cost model and run_features."""

from __future__ import annotations

import random

import pytest

from planner.cost import cost_stages
from planner.features import run_features
from planner.search import (accelerator_space, candidate_features, candidate_stages, cpu_space,
                            enumerate_candidates, frontier)


@pytest.fixture(scope="module")
def a100():
    space = accelerator_space()
    return space, enumerate_candidates(space, "a100-80gb", "clipa-paper")


def test_space_is_large_and_covers_the_clipa_recipe(a100):
    space, df = a100
    assert len(df) == space.size >= 10_000
    assert set(df["model"]) >= {"B/16", "L/14", "H/14", "bigG/14"}
    assert 84 in space.pretrain_res[14] and 8 in space.text_lens


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_cost_equals_cost_model(a100, seed):
    space, df = a100
    for i in random.Random(seed).sample(range(len(df)), 40):
        row = df.iloc[i]
        c = cost_stages(row.model, candidate_stages(row, space), "a100-80gb", "clipa-paper")
        assert row.cost_usd == pytest.approx(c.cost_usd, rel=1e-9)
        assert row.flops == pytest.approx(c.flops, rel=1e-9)


def test_vectorised_features_equal_run_features(a100):
    space, df = a100
    feats = candidate_features(df, space, "laion-2b")
    for i in random.Random(2).sample(range(len(df)), 60):
        row = df.iloc[i]
        assert feats.iloc[i].to_dict() == run_features(row.model, "laion-2b", candidate_stages(row, space))


def test_candidate_stages_are_valid_specs_with_clipa_shape(a100):
    space, df = a100
    row = df[(df.model == "H/14") & (df.ft_id == 1)].iloc[0]
    stages = candidate_stages(row, space)
    assert stages[0].init == "scratch" and stages[1].init == "previous"
    assert stages[1].image_res == 224 and stages[0].text_reduction.value in ("syntax", "truncate")


def test_cpu_space_is_cheap():
    space = cpu_space()
    df = enumerate_candidates(space, "cpu-2core", "on-demand")
    assert df["cost_usd"].max() < 1.0 and df["device_hours"].min() < 0.01


def test_frontier_is_monotone(a100):
    _, df = a100
    d = df.assign(predicted_top1=(df["flops"].rank(pct=True) * 80).round(1))
    f = frontier(d)
    assert f["cost_usd"].is_monotonic_increasing and f["predicted_top1"].is_monotonic_increasing
