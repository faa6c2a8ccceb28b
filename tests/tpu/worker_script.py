"""A stand-in trainer for the launcher tests: a real process with the trainer's command line and resume contract.

Invoked exactly like ``python -m trainer.cli train SPEC --run-dir DIR`` (argv: SPEC --run-dir DIR), with the
variables the launcher sets for local workers (CLIPA_DISTRIBUTED, JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). It walks the spec's stages step by step (samples / batch_size steps each, a short sleep per step);
process 0 writes a checkpoint after every step (atomically) and ``result.json`` at the end, and every process
resumes from the checkpoint it finds, as the real trainer resumes from its run dir. It prints its environment so
tests can check that no secret reached it.

Marker files in the run dir make it misbehave on purpose: ``crash-once`` (process 0 exits 3 after two steps, once),
``bad-input`` (exit code 2, what the trainer returns for a bad spec) and ``print-secrets`` (it prints token-shaped
strings, which the launcher must mask in every log).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

STEP_SECONDS = 0.05


def main() -> int:
    spec_path, flag, run_dir = sys.argv[1:4]
    assert flag == "--run-dir", sys.argv
    assert os.environ.get("CLIPA_DISTRIBUTED") == "1"
    pid = int(os.environ["JAX_PROCESS_ID"])
    nproc = int(os.environ["JAX_NUM_PROCESSES"])
    spec = json.loads(Path(spec_path).read_text())
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    print("environment: " + json.dumps(dict(os.environ), sort_keys=True), flush=True)
    Path(f"pid-{pid}").write_text(str(os.getpid()))  # in the worker's folder: lets tests check it was stopped
    if (run / "print-secrets").exists():
        print("token: ya29.FAKE-worker-token-123", flush=True)
        print("-----BEGIN PRIVATE KEY-----\nWORKERPRIVATEKEY\n-----END PRIVATE KEY-----", flush=True)
    if (run / "bad-input").exists():
        print("error: spec: bad input", flush=True)
        return 2
    ckpt = run / "checkpoint.json"
    state = json.loads(ckpt.read_text()) if ckpt.exists() else {"stage": 0, "step": 0, "resumed_at": []}
    if ckpt.exists():
        state["resumed_at"].append([state["stage"], state["step"]])
    print(f"process {pid}/{nproc}: coordinator {os.environ['JAX_COORDINATOR_ADDRESS']}, starting at stage "
          f"{state['stage']} step {state['step']}", flush=True)
    steps_done = 0
    while state["stage"] < len(spec["stages"]):
        stage = spec["stages"][state["stage"]]
        n_steps = -(-stage["samples"] // stage["batch_size"])
        while state["step"] < n_steps:
            time.sleep(STEP_SECONDS)
            state["step"] += 1
            steps_done += 1
            if pid == 0:
                tmp = ckpt.with_suffix(".tmp")
                tmp.write_text(json.dumps(state))
                os.replace(tmp, ckpt)
                print(f"stage {state['stage']} step {state['step']}/{n_steps}", flush=True)
                if steps_done == 2 and (run / "crash-once").exists():
                    (run / "crash-once").unlink()
                    print("crashing on purpose", flush=True)
                    return 3
        state["stage"] += 1
        state["step"] = 0
    if pid == 0:
        (run / "result.json").write_text(json.dumps({"stages": len(spec["stages"]), "resumed_at": state["resumed_at"],
                                                     "processes": nproc}))
        print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
