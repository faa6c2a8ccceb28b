"""Multi-host SPMD on one machine: two processes with four fake CPU devices each train the same spec as one process
with eight devices. Each process feeds only its half of every batch (jax.make_array_from_process_local_data), the
checkpoint holds both processes' data positions, and the losses and final parameters match the single-process run
(to rtol 1e-5: the cross-process reductions over Gloo may add in another order). The two processes join either
through JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES/JAX_PROCESS_ID or, as on a SLURM cluster, through the variables
``srun`` sets for the tasks of a job step (JAX's own SLURM cluster detection reads them).

Also: how ``maybe_initialize_distributed`` decides to join a multi-host run (the Cloud TPU branch, which cannot run
here, is checked against the call it makes)."""

from __future__ import annotations

import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from trainer_helpers import HERE, REPO, eight_devices, run_python, subprocess_env

from trainer import mesh
from trainer.checkpoint import Checkpoints
from trainer.telemetry import read_metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


WORKER = str(HERE / "_multiprocess_worker.py")


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    """The reference: one process with eight CPU devices."""
    out = tmp_path_factory.mktemp("mp_one") / "one"
    single = run_python([WORKER, str(out)], env_extra=eight_devices())
    assert (single["processes"], single["devices"]) == (1, 8)
    return out


def _slurm_job_id() -> int:
    """A job id whose coordinator port (JAX's SlurmCluster: SLURM_JOB_ID % 4096 + 61440) is free on this machine."""
    import random

    for _ in range(200):
        job = random.randrange(100_000, 10_000_000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", job % 4096 + 61440))
            except OSError:
                continue
        return job
    raise RuntimeError("no free port in 61440-65535")


def _srun_env(pid: int, job: int) -> dict[str, str]:
    """What ``srun`` sets for task ``pid`` of a one-node, two-task job step (``sbatch --nodes=1 --ntasks-per-node=2``
    then ``srun``) on a node named localhost."""
    job = str(job)
    return {"SLURM_JOB_ID": job, "SLURM_JOBID": job, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0",
            "SLURM_JOB_NODELIST": "localhost", "SLURM_NODELIST": "localhost", "SLURM_STEP_NODELIST": "localhost",
            "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_STEP_NUM_NODES": "1",
            "SLURM_NTASKS": "2", "SLURM_NPROCS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_TASKS_PER_NODE": "2",
            "SLURM_STEP_TASKS_PER_NODE": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_GTIDS": "0,1",
            "SLURM_PROCID": str(pid), "SLURM_LOCALID": str(pid), "SLURM_NODEID": "0",
            "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "SLURMD_NODENAME": "localhost", "SLURM_TOPOLOGY_ADDR": "localhost"}


@pytest.mark.slow  # two JAX processes each (~30 s), plus the one-process reference once (~15 s)
@pytest.mark.parametrize("join", ["jax-env", "srun-env"])
def test_two_processes_train_like_one(tmp_path, one_process_run, join):
    port, job = _free_port(), _slurm_job_id()
    procs = []
    for pid in range(2):
        env = {k: v for k, v in subprocess_env().items()  # only the variables of the join under test
               if not k.startswith(("SLURM", "JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID", "CLIPA_DISTRIB"))}
        env.update({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                    "JAX_PROCESS_ID": str(pid)} if join == "jax-env" else _srun_env(pid, job))
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
        procs.append(subprocess.Popen([sys.executable, WORKER, str(tmp_path / "two")], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
        assert '"processes": 2, "devices": 8' in out
    assert "cpu: 8 device(s) (cpu) in 2 process(es), compute float32" in outs[0][1]  # said by process 0 only
    assert "device(s)" not in outs[1][1]

    one = [r["loss"] for r in read_metrics(one_process_run) if r["kind"] == "step"]
    two = [r["loss"] for r in read_metrics(tmp_path / "two") if r["kind"] == "step"]  # written by process 0 only
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-5)
    params_one, params_two = (np.load(d / "final_params.npz") for d in (one_process_run, tmp_path / "two"))
    assert sorted(params_one.files) == sorted(params_two.files) and len(params_one.files) > 10
    for name in params_one.files:
        a, b = params_two[name], params_one[name]
        if name.endswith("['qkv']['bias']"):
            # The key bias shifts every logit of a query equally, so softmax makes its true gradient exactly 0; what
            # is left is rounding noise that Adam scales up to lr-sized steps. Compare query and value biases only.
            width = a.shape[-1] // 3
            a, b = np.delete(a, np.s_[width:2 * width], axis=-1), np.delete(b, np.s_[width:2 * width], axis=-1)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6, err_msg=name)
    store = Checkpoints(tmp_path / "two" / "checkpoints", read_only=True)
    meta = store.meta(store.latest_step())
    assert meta["data_states"] == [{"kind": "synthetic", "stage": 0, "step": 4}] * 2


def _spawn_train(spec_path, run_dir, port: int, devices_per_process: int = 2) -> list[subprocess.Popen]:
    """``python -m trainer.cli train SPEC --run-dir RUN_DIR`` as 2 processes of one JAX job (what every worker of a
    2-host slice runs), each with ``devices_per_process`` fake CPU devices."""
    procs = []
    for pid in range(2):
        env = subprocess_env({"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                              "JAX_PROCESS_ID": str(pid),
                              "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"})
        procs.append(subprocess.Popen([sys.executable, "-m", "trainer.cli", "train", str(spec_path), "--run-dir",
                                       str(run_dir), "--no-progress", "--json"], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    from trainer.data.synth import write_synth

    out = tmp_path_factory.mktemp("mp_data") / "tiny"
    write_synth(out, samples=96, eval_samples=100, resolution=16, shard_size=48, vocab_size=300)
    return out


def _eval_spec(data, **overrides) -> dict:
    """mu/8 at 16 px, 8 steps of batch 8 (4 rows per process), FSDP: the bigger arrays are split over both
    processes' devices (so gathering them takes a collective), the small ones stay replicated."""
    spec = {"name": "mp-eval", "model": "mu/8", "dataset": "local:tiny", "hardware": "cpu-2core",
            "pricing": "on-demand", "seed": 0, "data": str(data / "train"), "eval_data": str(data / "eval"),
            "tokenizer": str(data / "tokenizer.json"),
            "stages": [{"samples": 64, "batch_size": 8, "image_res": 16, "text_len": 8, "lr_base": 0.01,
                        "init": "scratch"}],
            "train": {"checkpoint_every_steps": 4, "log_every_steps": 1, "sharding": "fsdp"}}
    spec.update(overrides)
    return spec


@pytest.mark.slow  # two JAX processes training 8 steps and one zero-shot evaluation (~40 s on two cores)
def test_two_processes_evaluate_like_one(tmp_path, eval_data):
    """`clipa train` as a 2-host job with eval_data: process 0 writes eval.json, both processes exit 0 and report the
    same numbers, and they are exactly those of a single-process evaluation of the final checkpoint."""
    import json

    from planner.spec import load_spec
    from trainer.checkpoint import load_trained
    from trainer.data.zeroshot import evaluate
    from trainer.embed import embed_images, embed_texts

    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(_eval_spec(eval_data)))
    run_dir = tmp_path / "run"
    procs = _spawn_train(spec_path, run_dir, _free_port())
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    summaries = [json.loads(out[out.index("{"):]) for out, _ in outs]
    assert [s["global_step"] for s in summaries] == [8, 8]

    ev = json.loads((run_dir / "eval.json").read_text())
    spec = load_spec(spec_path)
    assert ev["run_id"] == spec.run_id and ev["n"] == 100
    assert summaries[0]["eval"] == summaries[1]["eval"] == {k: ev[k] for k in ("top1", "top5", "n", "attributes")
                                                            if k in ev}

    # The same final parameters, evaluated by one process (what `clipa eval RUN_DIR` does).
    tm = load_trained(run_dir)
    final = spec.stages[-1]
    single = evaluate(spec.eval_data, lambda x: embed_images(tm, x), lambda t: embed_texts(tm, t),
                      image_res=final.image_res, text_len=final.text_len, tokenizer=spec.tokenizer, spec=spec)
    assert (ev["top1"], ev["top5"], ev["n"]) == (single["top1"], single["top5"], single["n"])
    assert ev["retrieval"] == single["retrieval"]


@pytest.mark.slow  # two JAX processes training 2 steps (~30 s on two cores)
def test_a_failed_evaluation_on_process_0_ends_both_processes(tmp_path, eval_data):
    """Bad eval data surfaces only at the end, on process 0: the waiting process is told and both exit 2 with one line
    naming the field, promptly (nobody hangs in a collective or waits for hours)."""
    import json
    import time

    (tmp_path / "empty").mkdir()
    spec = _eval_spec(eval_data, eval_data=str(tmp_path / "empty"))
    spec["stages"][0]["samples"] = 16
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    started = time.monotonic()
    procs = _spawn_train(tmp_path / "spec.json", tmp_path / "run", _free_port())
    outs = [p.communicate(timeout=300) for p in procs]
    assert time.monotonic() - started < 240
    for pid, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 2, err[-4000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"error: eval_data: {tmp_path / 'empty'} has neither shards"), last
        assert last.endswith("(zero-shot evaluation on process 0)") == (pid == 1), last
    assert (tmp_path / "run" / "train_summary.json").exists() and not (tmp_path / "run" / "eval.json").exists()


@pytest.fixture
def record_initialize(monkeypatch):
    """Replace JAX's join (it would block waiting for a coordinator) with a recorder of how it was called."""
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
    for var in ("JAX_COORDINATOR_ADDRESS", "CLIPA_DISTRIBUTED", "TPU_WORKER_HOSTNAMES", *mesh._SLURM_STEP_VARS):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_single_machine_does_not_join(record_initialize, monkeypatch):
    mesh.maybe_initialize_distributed()
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # a single-host TPU VM
    mesh.maybe_initialize_distributed()
    assert record_initialize == []


def test_tpu_vm_joins_with_discovery(record_initialize, monkeypatch):
    # What the launcher's ssh command sets on every worker of a slice: no coordinator address, discover it.
    monkeypatch.setenv("CLIPA_DISTRIBUTED", "1")
    mesh.maybe_initialize_distributed()
    monkeypatch.delenv("CLIPA_DISTRIBUTED")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")  # GKE-style multi-host environment
    mesh.maybe_initialize_distributed()
    assert record_initialize == [((), {}), ((), {})]


def test_srun_step_joins_with_slurm_detection(record_initialize, monkeypatch):
    # The batch script itself (no step), and a one-task step, are single-process runs.
    step = _srun_env(1, 4242)
    for k, v in step.items():
        if k != "SLURM_STEP_ID":
            monkeypatch.setenv(k, v)
    mesh.maybe_initialize_distributed()
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    mesh.maybe_initialize_distributed()
    assert record_initialize == []
    monkeypatch.setenv("SLURM_NTASKS", "2")
    mesh.maybe_initialize_distributed()
    assert record_initialize == [((), {"cluster_detection_method": "slurm"})]
