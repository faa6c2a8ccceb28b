"""``clipa rehearse PLAN``: run a plan's exact structure scaled down on this machine, before paying for it.

For every run of the plan, ``rehearsal_spec`` keeps what could break at full size and shrinks what costs: the same
number of stages with the same per-stage choices (resolution ratios between stages, masking kind and ratio, text
length and reduction, learning rate, ``init``, position-embedding and pooling options, micro-batching), a tiny tower
of the same patch family (``mu/<patch>``), a batch of ``BATCH`` and ``STEPS`` optimiser steps per stage, reading only
the first shard of the bound training data. ``rehearse_run`` then checks, in order, and reports each check:

  data readable       the first shard opens and holds image + caption samples
  captions tokenize   the bound tokenizer loads (CLIP convention) and knows the captions' words
  eval layout         the evaluation set is a layout clipa reads (wnid folders / shards with 'cls') and has labels
  stage K compiles    every stage compiles and takes its optimiser steps
  checkpoint resumed  the last checkpoint is dropped and the run resumed from the one before; the final parameters
                      equal the uninterrupted run's
  eval ran            zero-shot evaluation on the first ``EVAL_LIMIT`` evaluation images

A failure is a ``ClipaError`` naming the check (and the stage), so the command prints one line and exits 2. Nothing
is written outside the rehearsal folder (``--out`` or a temporary one): no record in ``results/runs/``.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import ClipaError
from planner.spec import RunSpec, spec_from_dict
from planner.variants import decode_variant

TINY_SIZE = "mu"
BATCH = 8
STEPS = 2
MAX_SIDE = 6  # patches per image side at the plan's largest resolution; the others keep their ratio to it
MIN_SIDE = 2
EVAL_LIMIT = 256
CAPTIONS_CHECKED = 64
MAX_UNKNOWN_SHARE = 0.05


@dataclass
class Check:
    name: str
    detail: str
    seconds: float


@dataclass
class Rehearsal:
    run_id: str
    spec: RunSpec  # the scaled-down spec that was trained
    checks: list[Check] = field(default_factory=list)


def rehearsal_spec(spec: RunSpec) -> RunSpec:
    """The plan's run scaled down: see the module docstring. Data locations are the first shard's."""
    from trainer.data.reader import list_shards
    from trainer.data.tokenizer import find_tokenizer

    patch = decode_variant(spec.model).patch
    sides = [st.image_res // patch for st in spec.stages]
    top = max(sides)
    stages = []
    for i, st in enumerate(spec.stages):
        side = max(MIN_SIDE, round(sides[i] * MAX_SIDE / top))
        init = st.init
        if init.startswith("checkpoint:"):  # a full-size checkpoint does not fit the tiny tower
            init = "scratch" if i == 0 else "previous"
        stage = {**st.model_dump(mode="json"), "samples": BATCH * STEPS, "batch_size": BATCH,
                 "image_res": side * patch, "warmup_samples": BATCH if st.warmup_samples else 0, "init": init}
        if stage.get("micro_batch") is not None:  # a per-stage micro-batch (where the spec has one): exercised too
            stage["micro_batch"] = BATCH // 2
        stages.append(stage)
    train = {**spec.train.model_dump(mode="json"), "checkpoint_every_steps": 1, "log_every_steps": 1,
             "compute_dtype": "float32", "sharding": "data"}
    if spec.train.micro_batch is not None:
        train["micro_batch"] = BATCH // 2  # exercise gradient accumulation as the plan does
    data = list_shards(spec.data)[0] if spec.data else None
    tokenizer = find_tokenizer(spec.tokenizer, spec.data) if spec.data else spec.tokenizer
    return spec_from_dict({
        **spec.model_dump(mode="json"),
        "name": None, "model": f"{TINY_SIZE}/{patch}", "data": data, "tokenizer": tokenizer,
        "stages": stages, "train": train,
    }, source="rehearsal")


def _check(out: list[Check], name: str, say: Callable[[str], None]):
    """Context manager: times a check, appends it, prints it."""
    import contextlib

    @contextlib.contextmanager
    def run():
        t0 = time.perf_counter()
        box: dict[str, str] = {"detail": ""}
        yield box
        c = Check(name, box["detail"], round(time.perf_counter() - t0, 2))
        out.append(c)
        say(f"  ok  {name}: {c.detail} ({c.seconds:.1f} s)")

    return run()


def check_data(spec: RunSpec) -> str:
    from trainer.data.pipeline import image_bytes
    from trainer.data.reader import iter_shard_samples

    shard = spec.data
    stats: dict[str, Any] = {}
    n = usable = 0
    for sample in iter_shard_samples(shard, 0, stats):
        n += 1
        usable += bool(sample.get("txt")) and image_bytes(sample) is not None
        if n >= CAPTIONS_CHECKED:
            break
    if usable == 0:
        why = "; ".join(stats.get("_notes", [])) or (f"none of its first {n} samples has both an image and a "
                                                      "caption (.txt)" if n else "no samples")
        raise ClipaError("data", f"first shard {shard} is not readable webdataset: {why}")
    return f"first shard {shard}: {n} samples read, {usable} with an image and a caption"


def check_tokenizer(spec: RunSpec) -> str:
    from trainer.data.reader import iter_shard_samples
    from trainer.data.tokenizer import load_tokenizer

    if not spec.tokenizer:
        raise ClipaError("tokenizer", "no tokenizer bound (give --tokenizer, or make one: clipa data tokenizer "
                                      "--data URL --out tokenizer.json)")
    tok = load_tokenizer(spec.tokenizer)
    texts = []
    for sample in iter_shard_samples(spec.data, 0, None):
        if sample.get("txt"):
            texts.append(sample["txt"].decode("utf-8", errors="replace"))
        if len(texts) >= CAPTIONS_CHECKED:
            break
    ids = [i for t in texts for i in tok.encode(t)]
    if not ids:
        raise ClipaError("tokenizer", f"{spec.tokenizer} gives no tokens for the data's captions")
    if tok.unknown_id is not None:
        share = sum(i == tok.unknown_id for i in ids) / len(ids)
        if share > MAX_UNKNOWN_SHARE:
            raise ClipaError("tokenizer", f"{spec.tokenizer} does not match the data: {share:.0%} of the first "
                                          f"{len(texts)} captions' tokens are unknown to it (train one on this data: "
                                          f"clipa data tokenizer --data URL --out tokenizer.json)")
    return f"{spec.tokenizer} (vocab {tok.vocab_size}): {len(texts)} captions, {len(ids)} tokens"


def check_eval(spec: RunSpec) -> str:

    return check_eval_layout(spec.eval_data, spec.stages[-1].image_res, limit=EVAL_LIMIT)


def _drop_last_checkpoint(run_dir: Path) -> int:
    """Delete the newest checkpoint (as if the run had died before writing it); the step it now resumes from."""
    from trainer import checkpoint as ckpt

    store = ckpt.Checkpoints(run_dir / ckpt.CHECKPOINT_DIR, read_only=True)
    steps = store.all_steps()
    store.close()
    if len(steps) < 2:
        raise ClipaError("checkpoint", f"expected a checkpoint per step in {run_dir}, found {steps}")
    shutil.rmtree(run_dir / ckpt.CHECKPOINT_DIR / str(steps[-1]))
    return steps[-2]


def rehearse_run(spec: RunSpec, out: Path, say: Callable[[str], None] = print) -> Rehearsal:
    """Every check of the module docstring for one run of a plan; raises ClipaError naming the failed check."""
    from planner.binding import missing_bindings

    for m in missing_bindings(spec):
        raise ClipaError(m["field"], f"run {spec.run_id}: {m['problem']} (supply it with {m['option']})")
    tiny = rehearsal_spec(spec)
    r = Rehearsal(spec.run_id, tiny)
    say(f"rehearsing run {spec.run_id} ({spec.model} {spec.schedule}) as {tiny.model} {tiny.schedule}")
    with _check(r.checks, "data readable", say) as c:
        c["detail"] = check_data(tiny)
    with _check(r.checks, "captions tokenize", say) as c:
        c["detail"] = check_tokenizer(tiny)
    with _check(r.checks, "eval layout", say) as c:
        c["detail"] = check_eval(tiny)

    from trainer.loop import param_fingerprint, train
    from trainer.embed import TrainedModel

    run_dir = out / spec.run_id
    if run_dir.exists():
        shutil.rmtree(run_dir)
    current = {"stage": 0}

    def factory(s: RunSpec, k: int, pidx: int, pcount: int):
        from trainer.data.pipeline import make_train_source

        current["stage"] = k
        return make_train_source(s, k, pidx, pcount, decode_threads=0)

    def stage_error(e: Exception) -> ClipaError:
        k = current["stage"]
        st = tiny.stages[k]
        what = f"stages[{k}]"
        cause = f"{e.field}: {e.message}" if isinstance(e, ClipaError) else f"{type(e).__name__}: {e}"
        return ClipaError(what, f"stage {k + 1} of {len(tiny.stages)} ({st.image_res}px, mask {st.image_mask.value} "
                                f"{st.mask_ratio:g}, text {st.text_len}:{st.text_reduction.value}, init {st.init}) "
                                f"failed: {cause}")

    t0 = time.perf_counter()
    try:
        first = train(tiny, run_dir, factory, progress=False, handle_signals=False, max_to_keep=None)
    except Exception as e:
        raise stage_error(e) from None
    r.checks.append(Check(f"{len(tiny.stages)} stages compile and step",
                          f"{first.global_step} steps, final loss {first.final_loss:.4f}",
                          round(time.perf_counter() - t0, 2)))
    say(f"  ok  {r.checks[-1].name}: {r.checks[-1].detail} ({r.checks[-1].seconds:.1f} s)")
    with _check(r.checks, "checkpoint written and resumed", say) as c:
        a = param_fingerprint(first.params)
        resumed_from = _drop_last_checkpoint(run_dir)
        try:
            again = train(tiny, run_dir, factory, progress=False, handle_signals=False, max_to_keep=None)
        except Exception as e:
            raise stage_error(e) from None
        b = param_fingerprint(again.params)
        if a != b:
            raise ClipaError("checkpoint", f"resuming from step {resumed_from} gave other final parameters "
                                           f"({b}) than the uninterrupted run ({a})")
        c["detail"] = f"resumed from step {resumed_from}, final parameters equal ({a})"
    with _check(r.checks, "eval ran", say) as c:
        from trainer.closed_loop import evaluate_run

        try:
            ev = evaluate_run(tiny, run_dir, TrainedModel(again.cfg, again.params), limit=EVAL_LIMIT)
        except ClipaError as e:
            raise ClipaError("eval_data", f"zero-shot evaluation failed: {e.field}: {e.message}") from None
        c["detail"] = (f"zero-shot top-1 {100 * ev['top1']:.1f}% on {ev['n']} images, {ev['classes']} classes "
                       "(a tiny tower after a few steps: the number only shows the path works)")
    return r


def check_eval_layout(path: str | None, image_res: int, limit: int = 256) -> str:
    """Read the first ``limit`` images of an evaluation set; what was found, or a ClipaError naming the layout."""
    from trainer.data.imagenet import EXPECTED_LAYOUT
    from trainer.data.pipeline import make_eval_source

    if not path:
        raise ClipaError("eval_data", f"no evaluation set bound: {EXPECTED_LAYOUT}")
    if "://" not in path and "{" not in path and not Path(path).exists():
        raise ClipaError("eval_data", f"{path} does not exist: {EXPECTED_LAYOUT}")
    source = make_eval_source(path, image_res, batch_size=64, limit=limit, decode_threads=0)
    n = labelled = 0
    top = -1
    for batch in source:
        labels = batch["labels"]
        n += len(labels)
        labelled += int((labels >= 0).sum())
        top = max(top, int(labels.max()))
    if n == 0:
        stats = source.stats()
        raise ClipaError("eval_data", f"no image could be read from {path} ({stats or 'empty'}): {EXPECTED_LAYOUT}")
    if labelled == 0:
        raise ClipaError("eval_data", f"{path}: the samples carry no class label: {EXPECTED_LAYOUT}")
    classes = len(source.classnames or [])
    if top >= classes:
        raise ClipaError("eval_data", f"{path}: class label {top} but only {classes} class names")
    kind = "class folders" if source.layout == "folders" else "shards"
    wn = " (WordNet ids, ImageNet-1k names)" if source.layout == "folders" and source.imagenet else ""
    return f"{path}: {kind}{wn}, {classes} classes, {labelled} labelled images read"
