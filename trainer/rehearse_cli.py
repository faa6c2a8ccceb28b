"""``clipa rehearse PLAN``: the plan's runs scaled down on this machine (``trainer.rehearse``), checks as a list.

Registered in ``trainer.cli.REGISTRARS``; JAX is imported inside the command body.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("rehearse")
    def rehearse_cmd(
        target: Annotated[Path, typer.Argument(help="a plan folder (plans/<plan-id>) or a run spec file")],
        out: Annotated[Optional[Path], typer.Option("--out", help="keep the rehearsal's run folders here (default: a temporary folder, removed)")] = None,
        data: Annotated[Optional[str], typer.Option("--data", help="training shards, replacing the plan's")] = None,
        eval_data: Annotated[Optional[str], typer.Option("--eval-data", help="evaluation set, replacing the plan's")] = None,
        tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json, replacing the plan's")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="print one JSON object (the checks) instead of lines")] = False,
    ) -> None:
        """Check a plan cheaply before paying for it: every run's exact stage structure (resolution ratios, masking,
        text length and reduction, init, position-embedding adaptation) on a tiny tower of the same patch family, a
        few steps per stage, reading the bound data's first shard, the first images of the evaluation set, with the
        bound tokenizer; then a checkpoint resume and a zero-shot evaluation. Records nothing in results/runs/.
        Any failure: one line naming the check or stage, exit code 2."""
        from planner.binding import bind_spec, resolve_binding
        from planner.cli import print_json
        from trainer.rehearse import rehearse_run
        from trainer.run_cli import _targets, execute_command

        plan_id, runs = _targets(target)
        if data or eval_data or tokenizer:
            runs = [(bind_spec(s, resolve_binding(s.dataset, data, eval_data, tokenizer, catalog={},
                                             discover_tokenizer=False)), p)
                    for s, p in runs]
        folder = out.absolute() if out is not None else Path(tempfile.mkdtemp(prefix="clipa-rehearse-"))
        folder.mkdir(parents=True, exist_ok=True)

        def say(line: str) -> None:
            if not json_out:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()

        t0 = time.perf_counter()
        done = []
        try:
            for spec, _ in runs:
                done.append(rehearse_run(spec, folder, say))
        finally:
            if out is None:
                shutil.rmtree(folder, ignore_errors=True)
        seconds = round(time.perf_counter() - t0, 1)
        if json_out:
            print_json({"plan_id": plan_id, "ok": True, "seconds": seconds, "runs": [
                {"run_id": r.run_id, "rehearsed_as": {"model": r.spec.model, "schedule": r.spec.schedule},
                 "checks": [{"check": c.name, "detail": c.detail, "seconds": c.seconds} for c in r.checks]}
                for r in done]})
            return
        where = f"; run folders kept in {folder}" if out is not None else ""
        say(f"rehearsal passed: {len(done)} run(s), {sum(len(r.checks) for r in done)} checks in {seconds:.0f} s"
            f"{where}. Nothing was recorded; execute with: "
            f"{execute_command(target, runs[0][0], {'data': data, 'eval_data': eval_data, 'tokenizer': tokenizer})}")
