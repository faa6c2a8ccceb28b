"""Run in a subprocess with 8 fake CPU devices (XLA_FLAGS set by the caller before JAX starts): loss and gradients of
one batch on a 1-device mesh, on the 8-device mesh (data parallel and FSDP), and with 4 micro-batches; prints the
largest differences as one JSON object. Also checks that layouts the mesh cannot take are refused."""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np

from planner.errors import ClipaError
from planner.spec import RunSpec
from trainer import mesh as meshlib
from trainer.loop import loss_and_grads, state_layout
from trainer.model import MaskConfig, ModelConfig, init_params
from trainer.optim import make_optimizer
from trainer.synthetic import SyntheticSource


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    model = sys.argv[1] if len(sys.argv) > 1 else "mu/8"
    runs = sys.argv[2].split(",") if len(sys.argv) > 2 else ["dp8", "fsdp8"]
    spec = RunSpec.model_validate(dict(
        model=model, dataset="local:t", hardware="cpu-2core", pricing="on-demand",
        stages=[dict(samples=64, batch_size=16, image_res=16, text_len=6, lr_base=1e-3, init="scratch",
                     image_mask="random", mask_ratio=0.5)],
    ))
    st = spec.stages[0]
    src = SyntheticSource(spec, 0)
    cfg = ModelConfig.for_stage(spec, 0, src.vocab_size, src.eot_id)
    mask = MaskConfig.for_stage(st)
    host_batch = src.next_batch()
    params_host = jax.device_get(jax.jit(lambda k: init_params(cfg, k))(jax.random.PRNGKey(1)))
    step_key = jax.random.PRNGKey(7)
    tx, _ = make_optimizer(st, spec.train)

    def run(devices, mode, micro):
        mesh = meshlib.make_mesh(devices)
        _, sh = state_layout(cfg, tx, mesh, mode)
        params = jax.device_put(params_host, sh["params"])
        batch = meshlib.global_batch(host_batch, mesh, st.batch_size)
        fn = jax.jit(lambda p, b, k: loss_and_grads(cfg, mask, mesh, p, b, k, micro))
        loss, grads = fn(params, batch, step_key)
        return float(loss), jax.device_get(grads)

    ref_loss, ref_grads = run(jax.devices()[:1], "data", 1)
    out = {"ref_loss": ref_loss}
    configs = {
        "dp8": (jax.devices(), "data", 1),
        "fsdp8": (jax.devices(), "fsdp", 1),
        "accum4_1dev": (jax.devices()[:1], "data", 4),
        "accum2_fsdp8": (jax.devices(), "fsdp", 2),
    }
    for name in runs:
        devs, mode, micro = configs[name]
        t0 = time.perf_counter()
        loss, grads = run(devs, mode, micro)
        out.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 2)
        # the largest difference in each array relative to that array's largest gradient, worst over arrays
        errs = [float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))
                for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))]
        ok = all(np.allclose(a, b, rtol=1e-5, atol=1e-6 * float(np.max(np.abs(b))) + 1e-12)
                 for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)))
        out[name] = {"loss": loss, "loss_rel": abs(loss - ref_loss) / abs(ref_loss), "grad_max_err": max(errs),
                     "grads_allclose": bool(ok)}

    refused = []
    mesh8 = meshlib.make_mesh()
    for batch, micro in [(12, None), (16, 3), (32, 4)]:
        try:
            meshlib.check_layout(batch, mesh8, micro)
            refused.append(None)
        except ClipaError as e:
            refused.append(str(e))
    out["refused"] = refused
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
