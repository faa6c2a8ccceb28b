"""The train loop: runs a spec's stages in order on the device mesh, with exact checkpoint/resume.

``train(spec, run_dir, source_factory=...)``:

1. Checks everything that can be checked before compiling anything (``preflight``): resolutions, batch and
   micro-batch layout over devices and processes, ``init: checkpoint:PATH`` paths, the data source, and that the run
   directory does not belong to a different spec. Problems are ``ClipaError``s naming the field.
2. Resumes automatically from the latest checkpoint in ``RUN_DIR/checkpoints`` (parameters, optimiser state, step,
   stage, RNG, every process's data-source position, cost meter), including in the middle of a later stage.
3. Runs each stage with a fresh optimiser and schedule (``trainer.optim``). A stage starts from scratch, from the
   previous stage's final weights (``previous``; learned position embeddings resampled to the new resolution), or
   from any checkpoint (``checkpoint:PATH``), or from an open_clip model folder (``checkpoint:open_clip:DIR``,
   ``trainer.export.open_clip``).
4. After every step runs the named steps of ``StepHooks.after_step`` in order: the NaN guard (a NaN/inf loss or
   gradient raises ``telemetry.NonFiniteError`` without saving, so the last checkpoint stays the last good one), the
   cost meter, logging (metrics.jsonl, TensorBoard, progress bar), signals, checkpoints (every
   ``train.checkpoint_every_steps`` global steps, at the end of every stage, and on SIGTERM/SIGINT) and the stop
   (``TrainingInterrupted`` after a signal). A periodic task (an evaluation every N steps) is one more hook there.

The run folder's file names are ``trainer.run_layout``'s; compiled programs are cached in ``trainer.compiled``.

The training step (``make_train_step``) is one jitted function with the state donated: forward both towers (image
tokens masked per the stage, ``trainer.masking``), the global-batch contrastive loss (``trainer.losses``), gradients,
AdamW update. With ``train.micro_batch`` set, gradients are accumulated exactly (``loss_and_grads``): because the
contrastive loss couples every sample with every other one, summing per-micro-batch losses would be a different
(and worse) objective. Instead (the "GradCache" scheme, Gao et al. 2021):

  a. embed every micro-batch without keeping activations (forward only);
  b. compute the global loss from all embeddings, and its gradient with respect to each embedding and the
     temperature (cheap: B x E numbers);
  c. for each micro-batch, recompute its forward pass and back-propagate that micro-batch's embedding gradients
     (a VJP), summing the parameter gradients.

By the chain rule this is the full-batch gradient; it differs only by float summation order. It costs one extra
forward pass and holds one micro-batch's activations at a time. Masks do not change with micro-batching because
each sample's mask key comes from its global index in the batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from planner.cost import dollars_for_flops, stage_tokens
from planner.errors import ClipaError
from planner.flops import stage_flops
from planner.hardware import get_hardware
from planner.spec import RunSpec, Stage, TrainOptions, spec_from_dict
from planner.variants import decode_variant
from trainer import checkpoint as ckpt
from trainer import compiled
from trainer import mesh as meshlib
from trainer.export import open_clip as open_clip_io
from trainer.losses import clip_loss
from trainer.masking import sample_keys
from trainer.data.pipeline import make_train_source
from trainer.data.tokenizer import find_tokenizer, load_tokenizer
from trainer.mesh import activation_sharding
from trainer.model import (
    MaskConfig,
    ModelConfig,
    abstract_params,
    adapt_params,
    bind,
    check_resolution,
    init_params,
    initialize,
    mask_for_batch,
    temperature,
)
from trainer.optim import make_optimizer
from trainer.run_layout import CHECKPOINT_DIR, SPEC_FILE, local_run_dir
from trainer.telemetry import CostMeter, NonFiniteError, RateWindow, Telemetry

SourceFactory = Callable[[RunSpec, int, int, int], Any]


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived; a checkpoint was saved and the same command resumes from it."""

    def __init__(self, signum: int, global_step: int, run_dir: Path):
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped at global step {global_step}; checkpoint saved in {run_dir}; "
                         f"rerun the same command to resume")
        self.signum = signum
        self.global_step = global_step


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    global_step: int
    final_loss: float | None
    cost: dict
    cfg: ModelConfig  # the last stage's model configuration
    params: Any  # the final parameters (device arrays)


# --------------------------------------------------------------------------------------------------------------------
# keys and state
# --------------------------------------------------------------------------------------------------------------------


def _root_key(seed: int) -> jax.Array:
    return jax.random.PRNGKey(seed)


def params_key(seed: int, stage_index: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(_root_key(seed), 0), stage_index)


def stage_rng(seed: int, stage_index: int) -> jax.Array:
    """The stage's base key; step ``s`` uses fold_in(key, s), so resuming needs only this key and the step."""
    return jax.random.fold_in(jax.random.fold_in(_root_key(seed), 1), stage_index)


def make_state(params, tx: optax.GradientTransformation, rng: jax.Array) -> dict:
    return {"params": params, "opt": tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}


def state_layout(cfg: ModelConfig, tx, mesh, sharding_mode: str) -> tuple[Any, Any]:
    """(abstract state, shardings) for a stage."""
    abstract = jax.eval_shape(lambda: make_state(init_params(cfg, jax.random.PRNGKey(0)), tx, jax.random.PRNGKey(0)))
    sh = meshlib.state_shardings(abstract, mesh, sharding_mode)
    sh["step"] = meshlib.replicated(mesh)
    sh["rng"] = meshlib.replicated(mesh)
    return abstract, sh


# --------------------------------------------------------------------------------------------------------------------
# loss, gradients, step
# --------------------------------------------------------------------------------------------------------------------


def loss_and_grads(cfg: ModelConfig, mask: MaskConfig, mesh, params, batch: dict, step_key: jax.Array,
                   micro_batches: int = 1) -> tuple[jax.Array, Any]:
    """Global-batch contrastive loss and its parameter gradients (traceable; see the module docstring)."""
    with activation_sharding(mesh):  # the model pins activations to the batch layout (model.batch_sharded)
        return _loss_and_grads(cfg, mask, mesh, params, batch, step_key, micro_batches)


def _loss_and_grads(cfg, mask, mesh, params, batch, step_key, micro_batches):
    images, tokens = batch["images"], batch["tokens"]
    n = images.shape[0]
    bsh = meshlib.batch_sharding(mesh)
    keys = None
    if mask.active:
        idx = jax.lax.with_sharding_constraint(jnp.arange(n, dtype=jnp.int32), bsh)
        keys = sample_keys(step_key, idx)
    keep = mask_for_batch(cfg, mask, keys)

    def embed(p, imgs, toks, kp):
        m = bind(cfg, p)
        return m.encode_image(imgs, kp), m.encode_text(toks)

    if micro_batches == 1:
        def loss_fn(p):
            img, txt = embed(p, images, tokens, keep)
            return clip_loss(img, txt, temperature(p["logit_scale"]), mesh)

        return jax.value_and_grad(loss_fn)(params)

    mbs = micro_batches
    per = n // mbs
    split_sh = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, meshlib.DATA_AXIS))

    def split(x):  # [B, ...] -> [M, B/M, ...]; micro-batch m holds rows j*M + m, so each stays spread over devices
        y = x.reshape((per, mbs) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(y, split_sh)

    def join(y):  # inverse of split
        return jax.lax.with_sharding_constraint(y.swapaxes(0, 1).reshape((n,) + y.shape[2:]), bsh)

    xs = {"images": split(images), "tokens": split(tokens)}
    if keep is not None:
        xs["keep"] = split(keep)

    # (a) all embeddings, forward only
    def fwd(mb):
        return embed(params, mb["images"], mb["tokens"], mb.get("keep"))

    img_m, txt_m = jax.lax.map(fwd, xs)
    img_all, txt_all = join(img_m), join(txt_m)

    # (b) the global loss and its gradient w.r.t. every embedding and the temperature parameter
    def global_loss(img, txt, ls):
        return clip_loss(img, txt, temperature(ls), mesh)

    loss, (g_img, g_txt, g_ls) = jax.value_and_grad(global_loss, argnums=(0, 1, 2))(
        img_all, txt_all, params["logit_scale"]
    )

    # (c) per micro-batch: recompute the forward pass and pull its embedding gradients back to the parameters
    def body(acc, inp):
        mb, gi, gt = inp
        _, vjp = jax.vjp(lambda p: embed(p, mb["images"], mb["tokens"], mb.get("keep")), params)
        (gp,) = vjp((gi, gt))
        return jax.tree.map(jnp.add, acc, gp), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, _ = jax.lax.scan(body, zeros, (xs, split(g_img), split(g_txt)))
    grads["logit_scale"] = grads["logit_scale"] + g_ls
    return loss, grads


def _step_key(stage: Stage) -> Stage:
    """The stage as far as the compiled step is concerned (where its weights came from does not matter)."""
    return stage.model_copy(update={"init": "scratch"})


def make_train_step(cfg: ModelConfig, mask: MaskConfig, stage: Stage, opts: TrainOptions, mesh) -> Callable:
    """The jitted step ``(state, batch) -> (state, metrics)``; ``state`` is donated."""
    return compiled.cached(("step", cfg, mask, _step_key(stage), opts, mesh),
                   lambda: _build_train_step(cfg, mask, stage, opts, mesh))


def _build_train_step(cfg: ModelConfig, mask: MaskConfig, stage: Stage, opts: TrainOptions, mesh) -> Callable:
    tx, schedule = make_optimizer(stage, opts)
    _, shardings = state_layout(cfg, tx, mesh, opts.sharding)
    micro = (stage.batch_size // opts.micro_batch) if opts.micro_batch else 1

    def step(state, batch):
        params = state["params"]
        step_key = jax.random.fold_in(state["rng"], state["step"])
        loss, grads = loss_and_grads(cfg, mask, mesh, params, batch, step_key, micro)
        updates, opt = tx.update(grads, state["opt"], params)
        new_params = optax.apply_updates(params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": schedule(state["step"]),
            "temperature": temperature(params["logit_scale"]),
        }
        return {"params": new_params, "opt": opt, "step": state["step"] + 1, "rng": state["rng"]}, metrics

    return jax.jit(
        step,
        donate_argnums=(0,),
        in_shardings=(shardings, meshlib.batch_sharding(mesh)),
        out_shardings=(shardings, meshlib.replicated(mesh)),
    )


_FINGERPRINT = jax.jit(lambda p: jax.tree.map(lambda x: jnp.stack([jnp.sum(x), jnp.sum(x * x)]), p))


def param_fingerprint(params) -> str:
    """A short digest of the parameters (per-array sum and sum of squares, computed on device, so it works for
    sharded and multi-host arrays): equal parameters give equal digests."""
    sums = jax.tree.leaves(jax.device_get(_FINGERPRINT(params)))
    blob = np.concatenate([np.asarray(s, np.float32).ravel() for s in sums]).tobytes()
    return hashlib.sha256(blob).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# checks before training
# --------------------------------------------------------------------------------------------------------------------


def default_source_factory(spec: RunSpec) -> SourceFactory:
    """``trainer.data.pipeline.make_train_source`` for a spec with ``data``; a ClipaError when unusable."""
    if spec.data is None:
        raise ClipaError("data", "the spec names no training data (data: FOLDER|SHARDS|URL); use --synthetic for a "
                                 "synthetic run")
    return make_train_source


def preflight(spec: RunSpec, mesh) -> None:
    """Every check that can fail before compiling anything; ClipaErrors name the field."""
    v = decode_variant(spec.model)
    for i, st in enumerate(spec.stages):
        check_resolution(v, st.image_res, field=f"stages[{i}].image_res")
        if st.text_len > v.max_text_len:
            raise ClipaError(f"stages[{i}].text_len", f"{st.text_len} exceeds {v.name}'s {v.max_text_len} positions")
        meshlib.check_layout(st.batch_size, mesh, spec.stage_train(i).micro_batch, field=f"stages[{i}].batch_size")
        if st.init.startswith(open_clip_io.INIT_PREFIX):
            open_clip_io.check_folder(st.init.removeprefix(open_clip_io.INIT_PREFIX), field=f"stages[{i}].init")
        elif st.init.startswith("checkpoint:"):
            ckpt.resolve_checkpoint(st.init.split(":", 1)[1], field=f"stages[{i}].init")


def check_run_dir(spec: RunSpec, run_dir: Path) -> RunSpec | None:
    """Refuse a run directory that holds another spec's run; write the spec into a new one. A folder of the same run
    (same run id) with other execution settings (micro-batch, remat, cadences, data locations, ...) is resumed: its
    spec file is replaced by this one and the folder's previous spec is returned, so the caller can log the change."""
    path = run_dir / SPEC_FILE
    if path.exists():
        try:
            old = spec_from_dict(json.loads(path.read_text(encoding="utf-8")), source=str(path))
        except (ClipaError, json.JSONDecodeError) as e:
            raise ClipaError("run_dir", f"{path} is not a readable run spec ({e}); use another run directory") from None
        if old.run_id != spec.run_id:
            raise ClipaError(
                "run_dir",
                f"{run_dir} holds run {old.run_id} ({old.model}: {old.schedule}), not this spec's run {spec.run_id}; "
                "use another --run-dir (a run directory belongs to one spec)",
            )
        if old != spec and jax.process_index() == 0:
            spec.write(path)
        return old
    if (run_dir / CHECKPOINT_DIR).exists() and any((run_dir / CHECKPOINT_DIR).iterdir()):
        raise ClipaError("run_dir", f"{run_dir} has checkpoints but no {SPEC_FILE}; use another --run-dir")
    if jax.process_index() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        spec.write(path)
    return None


def check_batch(batch: Any, stage: Stage, stage_index: int, local: int) -> dict[str, np.ndarray]:
    """A ClipaError unless the source's batch has the interface's fields, shapes and dtypes."""
    field = f"data (stage {stage_index + 1})"
    if not isinstance(batch, dict) or "images" not in batch or "tokens" not in batch:
        raise ClipaError(field, "the source must return a dict with 'images' and 'tokens'")
    imgs, toks = np.asarray(batch["images"]), np.asarray(batch["tokens"])
    want_i = (local, stage.image_res, stage.image_res, 3)
    if imgs.shape != want_i or imgs.dtype != np.uint8:
        raise ClipaError(field, f"images must be uint8 {list(want_i)}, got {imgs.dtype} {list(imgs.shape)}")
    want_t = (local, stage.text_len)
    if toks.shape != want_t or not np.issubdtype(toks.dtype, np.integer):
        raise ClipaError(field, f"tokens must be int32 {list(want_t)}, got {toks.dtype} {list(toks.shape)}")
    return {"images": imgs, "tokens": toks.astype(np.int32, copy=False)}


def _vocab(spec: RunSpec, source: Any, vocab_size: int | None, eot_id: int | None) -> tuple[int, int | None]:
    if vocab_size is None:
        # the source's own, or its tokenizer's (trainer.data.pipeline's sources carry the tokenizer)
        for owner in (source, getattr(source, "tokenizer", None)):
            if owner is not None and getattr(owner, "vocab_size", None):
                vocab_size = owner.vocab_size
                eot_id = getattr(owner, "eot_id", None) if eot_id is None else eot_id
                break
    if vocab_size is None and (spec.tokenizer or spec.data):
        tok = load_tokenizer(find_tokenizer(spec.tokenizer, spec.data))
        vocab_size, eot_id = tok.vocab_size, (tok.eot_id if eot_id is None else eot_id)
    return int(vocab_size or decode_variant(spec.model).vocab_size), eot_id


# --------------------------------------------------------------------------------------------------------------------
# signals
# --------------------------------------------------------------------------------------------------------------------


class _StopFlag:
    """Turns the first SIGTERM/SIGINT into a request to checkpoint and stop; a second one acts as usual."""

    def __init__(self, enabled: bool):
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if enabled and threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self._old.get(signum, signal.SIG_DFL))

    def requested(self) -> int | None:
        if jax.process_count() > 1:  # every process must stop at the same step to save one checkpoint together
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.asarray([self.signum or 0], np.int32))
            nz = [int(f) for f in np.ravel(flags) if f]
            return nz[0] if nz else None
        return self.signum

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


# --------------------------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------------------------


def _loggable_data_state(state: dict) -> dict:
    """The data position for metrics.jsonl: in full when small (synthetic sources), else a digest, since a shard
    reader's state holds its whole shuffle buffer (tens of KB) and is checkpointed anyway."""
    blob = json.dumps(state, sort_keys=True, separators=(",", ":"))
    if len(blob) <= 2048:
        return {"data_state": state}
    return {"data_state_sha256": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def _say(msg: str, on: bool) -> None:
    if on and jax.process_index() == 0:
        print(msg, file=sys.stderr, flush=True)


@dataclasses.dataclass
class StepEnd:
    """What the loop knows when a training step has finished; every hook of ``StepHooks`` reads it."""

    stage: int
    stage_step: int  # steps done in this stage, this one included
    stage_steps: int
    global_step: int
    metrics: dict[str, float]  # loss, grad_norm, lr, temperature (host floats)
    wall_s: float  # since the previous step ended
    data_state: dict  # the source's position after this step's batch
    state: dict  # the train state after the step (device arrays)
    signum: int | None = None  # set by ``poll_signals``: a stop was requested


class StepHooks:
    """The work around each train step, as named steps run in order by ``after_step``: the NaN guard, the cost meter,
    logging, signals, checkpoints and the stop. Another periodic task (an evaluation every N steps) is one more
    method in ``after_step``'s list. A hook stops the run by raising (``NonFiniteError``, ``TrainingInterrupted``)."""

    def __init__(self, spec: RunSpec, run_dir: Path, store: ckpt.Checkpoints, tele: Telemetry, cost: CostMeter,
                 stop: _StopFlag, n_devices: int, last_saved: int | None):
        self.spec, self.run_dir, self.store, self.tele, self.cost, self.stop = spec, run_dir, store, tele, cost, stop
        self.hw = get_hardware(spec.hardware)
        self.n_devices = n_devices
        self.last_saved = last_saved  # the global step of the newest checkpoint (the last good one)

    def begin_stage(self, k: int, cfg: ModelConfig) -> None:
        """What a stage's steps cost (planner.flops / planner.cost) and a fresh speed window."""
        spec, st = self.spec, self.spec.stages[k]
        self.cfg, self.batch_size = cfg, st.batch_size
        self.flops_step = stage_flops(spec.model, st).train_per_sample * st.batch_size
        self.usd_step = dollars_for_flops(self.flops_step, stage_tokens(spec.model, st), cfg.variant.image.width,
                                          spec.hardware, spec.pricing)
        self.later_flops = sum(stage_flops(spec.model, s2).total for s2 in spec.stages[k + 1:])
        self.rate = RateWindow()

    def after_step(self, end: StepEnd) -> None:
        for hook in (self.guard_finite, self.meter_cost, self.log, self.poll_signals, self.checkpoint,
                     self.stop_if_signalled):
            hook(end)

    def guard_finite(self, end: StepEnd) -> None:
        """A NaN/inf loss or gradient stops the run before anything is saved: the last checkpoint stays good."""
        m, k, s = end.metrics, end.stage, end.stage_step
        if math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]):
            return
        self.store.wait()
        raise NonFiniteError(
            f"non-finite {'loss' if not math.isfinite(m['loss']) else 'gradient'} at stage {k + 1} step "
            f"{s} (global step {end.global_step}): loss={m['loss']}, grad_norm={m['grad_norm']}; no checkpoint "
            f"was written for it; the last good checkpoint is "
            f"{'step ' + str(self.last_saved) if self.last_saved is not None else 'none'} in {self.store.directory}",
            end.global_step, self.last_saved,
        )

    def meter_cost(self, end: StepEnd) -> None:
        self.rate.tick()
        self.cost.add(self.batch_size, self.flops_step, self.usd_step, end.wall_s, self.n_devices)

    def log(self, end: StepEnd) -> None:
        """metrics.jsonl and TensorBoard every ``train.log_every_steps`` and at a stage's end; the progress bar."""
        spec, cost, m, s = self.spec, self.cost, end.metrics, end.stage_step
        sps_step = self.rate.seconds_per_step()
        sps = self.batch_size / sps_step if sps_step else None
        mfu = self.flops_step / sps_step / (self.hw.peak_flops * self.n_devices) if sps_step else None
        eta = ((end.stage_steps - s) * sps_step + self.later_flops / (self.flops_step / sps_step)) if sps_step else None
        if s % spec.train.log_every_steps == 0 or s == end.stage_steps:
            self.tele.log_step({
                "global_step": end.global_step, "stage": end.stage, "stage_step": s, "samples": cost.samples,
                **m, "samples_per_s": sps, "mfu": mfu, "usd": cost.usd, "usd_wall":
                cost.device_s / 3600 * self.hw.price(spec.pricing).usd_per_device_hour,
                **_loggable_data_state(end.data_state),
            })
        self.tele.update_bar(end.global_step, end.stage, len(spec.stages), s, end.stage_steps, m["loss"], sps, mfu,
                             cost.usd, eta)

    def poll_signals(self, end: StepEnd) -> None:
        end.signum = self.stop.requested()  # a collective in a multi-process run: every process asks every step

    def checkpoint(self, end: StepEnd) -> None:
        """Every ``train.checkpoint_every_steps`` global steps, at a stage's end, and when a stop was requested."""
        due = end.global_step % self.spec.train.checkpoint_every_steps == 0
        if not (end.stage_step == end.stage_steps or due or end.signum):
            return
        state = end.state
        self.store.save(end.global_step, state["params"], state["opt"], {
            "version": ckpt.META_VERSION, "run_id": self.spec.run_id, "stage": end.stage,
            "stage_step": end.stage_step, "stage_steps": end.stage_steps, "global_step": end.global_step,
            "rng": [int(x) for x in np.asarray(jax.device_get(state["rng"])).ravel()],
            "data_states": ckpt.gather_json(end.data_state), "cost": self.cost.to_dict(),
            "model": ckpt.model_meta(self.cfg), "loss": end.metrics["loss"],
        })
        self.last_saved = end.global_step

    def stop_if_signalled(self, end: StepEnd) -> None:
        if end.signum:
            self.store.wait()
            raise TrainingInterrupted(end.signum, end.global_step, self.run_dir)


def train(
    spec: RunSpec,
    run_dir: str | Path,
    source_factory: SourceFactory | None = None,
    *,
    vocab_size: int | None = None,
    eot_id: int | None = None,
    devices: list | None = None,
    progress: bool = True,
    handle_signals: bool = True,
    max_to_keep: int | None = 3,
) -> TrainResult:
    """Run (or resume) ``spec`` in ``run_dir``. See the module docstring."""
    run_dir = local_run_dir(run_dir)
    factory = source_factory or default_source_factory(spec)
    mesh = meshlib.make_mesh(devices)
    n_dev = mesh.devices.size
    pidx, pcount = jax.process_index(), jax.process_count()
    primary = pidx == 0
    preflight(spec, mesh)
    previous_spec = check_run_dir(spec, run_dir)
    store = ckpt.Checkpoints(run_dir / CHECKPOINT_DIR, max_to_keep=max_to_keep)

    # ---- where to start ------------------------------------------------------------------------------------------
    latest = store.latest_step()
    meta = store.meta(latest) if latest is not None else None
    # checkpoints written before run ids covered only what is learned carry the spec's old id (RunSpec.legacy_run_id)
    own_ids = {spec.run_id, spec.legacy_run_id} | ({previous_spec.legacy_run_id} if previous_spec else set())
    if meta is not None and meta.get("run_id") not in own_ids:
        raise ClipaError("run_dir", f"checkpoint {latest} in {run_dir} belongs to run {meta.get('run_id')}, "
                                    f"not {spec.run_id}")
    start_stage, start_step, global_step = 0, 0, 0
    cost = CostMeter()
    carried: tuple[ModelConfig, Any] | None = None  # (config, params) the next stage may start from
    if meta is not None:
        start_stage, start_step, global_step = meta["stage"], meta["stage_step"], meta["global_step"]
        cost = CostMeter.from_dict(meta.get("cost"))
        vocab_size, eot_id = meta["model"]["vocab_size"], meta["model"].get("eot_id")
        if start_step >= spec.stages[start_stage].steps:  # resumed at a stage boundary
            prev_cfg = ckpt.config_from_meta(meta, dtype=ModelConfig.for_stage(spec, start_stage, vocab_size).dtype,
                                             remat=spec.train.remat)
            carried = (prev_cfg, _restore_params(store, latest, prev_cfg, mesh, spec.train.sharding))
            start_stage, start_step = start_stage + 1, 0
    total_steps = sum(st.steps for st in spec.stages)
    if start_stage >= len(spec.stages):
        _say(f"run {spec.run_id} is already complete ({global_step} steps) in {run_dir}", progress)
        store.close()
        return TrainResult(run_dir, global_step, None, cost.to_dict(), carried[0], carried[1])
    if meta is not None:
        _say(f"resuming run {spec.run_id} at stage {start_stage + 1}, step {start_step} (global step {global_step})",
             progress)

    tele = Telemetry(run_dir, total_steps, primary=primary, progress=progress,
                     resume_global_step=global_step if meta is not None else None)
    if meta is not None:
        changed = spec.execution_changes(previous_spec) if previous_spec is not None else {}
        tele.event({"kind": "resume", "global_step": global_step, "stage": start_stage, "stage_step": start_step,
                    **({"changed": {k: {"was": a, "now": b} for k, (a, b) in changed.items()}} if changed else {})})
        if changed:
            _say("resuming with changed execution settings: "
                 + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), progress)
    stop = _StopFlag(handle_signals)
    hooks = StepHooks(spec, run_dir, store, tele, cost, stop, n_dev, last_saved=latest)
    final_loss = None
    cfg = None
    state = None
    try:
        for k in range(start_stage, len(spec.stages)):
            st = spec.stages[k]
            source = factory(spec, k, pidx, pcount)
            if k == start_stage and meta is None:  # a resumed run keeps its checkpoint's vocabulary
                vocab_size, eot_id = _vocab(spec, source, vocab_size, eot_id)
            cfg = ModelConfig.for_stage(spec, k, vocab_size, eot_id)
            mask = MaskConfig.for_stage(st)
            tx, _ = make_optimizer(st, spec.train)
            abstract, shardings = state_layout(cfg, tx, mesh, spec.train.sharding)
            resuming_mid_stage = k == start_stage and start_step > 0
            if resuming_mid_stage:
                params, opt = store.restore(
                    latest,
                    ckpt.abstract_like(abstract["params"], shardings["params"]),
                    ckpt.abstract_like(abstract["opt"], shardings["opt"]),
                )
                state = {
                    "params": params,
                    "opt": opt,
                    "step": jax.device_put(jnp.asarray(start_step, jnp.int32), shardings["step"]),
                    "rng": jax.device_put(jnp.asarray(meta["rng"], jnp.uint32), shardings["rng"]),
                }
                source.set_state(meta["data_states"][pidx])
                init_from = f"checkpoint {latest} (resume)"
            else:
                params, init_from = _stage_params(spec, k, cfg, carried, mesh, shardings["params"])
                new_state = compiled.cached(("state", cfg, _step_key(st), spec.train, mesh), lambda: jax.jit(
                    lambda p, r: make_state(p, tx, r), out_shardings=shardings))
                state = new_state(params, stage_rng(spec.seed, k))
                del params
                tele.event({"kind": "stage_start", "global_step": global_step, "stage": k, "init": init_from,
                            "params_fingerprint": param_fingerprint(state["params"]), "image_res": st.image_res,
                            "text_len": st.text_len, "mask": mask.strategy, "mask_ratio": mask.ratio})
            carried = None
            step_fn = make_train_step(cfg, mask, st, spec.stage_train(k), mesh)
            hooks.begin_stage(k, cfg)
            local = meshlib.local_batch_size(st.batch_size)

            def fetch():
                return meshlib.global_batch(check_batch(source.next_batch(), st, k, local), mesh, st.batch_size)

            s = start_step if k == start_stage else 0
            batch = fetch() if s < st.steps else None
            if k == start_stage and primary:  # inputs checked; what this run trains on, before the first compile
                print(meshlib.describe_devices(cfg.dtype), file=sys.stderr, flush=True)
            t_last = time.perf_counter()
            while s < st.steps:
                data_state = source.get_state()  # the position after this step's batch, before the next is read
                state, metrics = step_fn(state, batch)
                s += 1
                global_step += 1
                batch = fetch() if s < st.steps else None  # reads the next batch while the device computes
                m = {name: float(v) for name, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                wall, t_last = now - t_last, now
                hooks.after_step(StepEnd(k, s, st.steps, global_step, m, wall, data_state, state))
                final_loss = m["loss"]
            tele.event({"kind": "stage_end", "global_step": global_step, "stage": k,
                        "params_fingerprint": param_fingerprint(state["params"]), "loss": final_loss})
            carried = (cfg, state["params"])
        store.wait()
        return TrainResult(run_dir, global_step, final_loss, cost.to_dict(), cfg, state["params"])
    finally:
        stop.restore()
        tele.close()
        store.close()


def _restore_params(store: ckpt.Checkpoints, step: int, cfg: ModelConfig, mesh, mode: str):
    ap = abstract_params(cfg)
    sh = meshlib.state_shardings(ap, mesh, mode)
    params, _ = store.restore(step, ckpt.abstract_like(ap, sh))
    return params


def _stage_params(spec: RunSpec, k: int, cfg: ModelConfig, carried, mesh, shardings) -> tuple[Any, str]:
    """A stage's starting parameters (with the stage's shardings) and where they came from."""
    st = spec.stages[k]
    if st.init == "scratch":
        return initialize(cfg, params_key(spec.seed, k), shardings, (mesh, spec.train.sharding)), "scratch"
    if st.init == "previous":
        if carried is None:
            raise ClipaError(f"stages[{k}].init", "'previous' but no earlier stage's weights are available")
        src_cfg, src_params = carried
        return jax.device_put(adapt_params(src_params, src_cfg, cfg), shardings), f"stage {k}"
    if st.init.startswith(open_clip_io.INIT_PREFIX):
        path = st.init.removeprefix(open_clip_io.INIT_PREFIX)
        params = open_clip_io.import_params(path, cfg, f"stages[{k}].init")
        return jax.device_put(params, shardings), f"open_clip {path}"
    path = st.init.split(":", 1)[1]
    directory, step = ckpt.resolve_checkpoint(path, field=f"stages[{k}].init")
    src_store = ckpt.Checkpoints(directory, read_only=True, async_save=False)
    try:
        src_cfg = ckpt.config_from_meta(src_store.meta(step), dtype=cfg.dtype, remat=cfg.remat)
        params = _restore_params(src_store, step, src_cfg, mesh, spec.train.sharding)
    finally:
        src_store.close()
    try:
        params = adapt_params(params, src_cfg, cfg)
    except ClipaError as e:
        raise ClipaError(f"stages[{k}].init", f"{path}: {e.message}") from None
    return jax.device_put(params, shardings), f"checkpoint {directory}/{step}"
