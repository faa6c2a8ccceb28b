"""On 8 fake CPU devices the sharded loss and gradients equal the single-device ones.

Runs ``_sharded_worker.py`` in a subprocess, because the device count must be set (XLA_FLAGS) before JAX starts.
Tolerances: the loss to rtol 1e-6 (it comes out identical here); gradients per element to rtol 1e-5 with an
absolute floor of 1e-6 x the array's largest gradient (different reduction order across devices).
"""

from __future__ import annotations

import pytest
from trainer_helpers import HERE, eight_devices, run_python


def _check(out: dict, names: list[str]) -> None:
    for name in names:
        r = out[name]
        assert r["loss_rel"] < 1e-6, (name, r)
        assert r["grads_allclose"], (name, r)
        assert r["grad_max_err"] < 1e-5, (name, r)


def test_data_parallel_on_8_devices_equals_one_device_and_bad_layouts_are_refused():
    out = run_python([str(HERE / "_sharded_worker.py"), "mu/8", "dp8"], eight_devices())
    _check(out, ["dp8"])
    assert out["refused"] == [
        "batch_size: global batch 12 is not divisible by the 8 devices",
        "train.micro_batch: 3 does not divide the global batch 16",
        "train.micro_batch: micro-batch 4 is not divisible by the 8 devices",
    ]


@pytest.mark.slow  # four more sharded compiles (~30 s)
def test_fsdp_and_accumulation_on_8_devices_equal_one_device():
    names = ["fsdp8", "accum4_1dev", "accum2_fsdp8"]
    out = run_python([str(HERE / "_sharded_worker.py"), "mini/8", ",".join(names)], eight_devices())
    _check(out, names)
