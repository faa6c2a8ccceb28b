"""Curate the shared research data into the project's published-results store (this folder).

Usage (from the repository root)::

    .venv/bin/python results/published/curate.py ../shared/data [--out results/published]

Reads ``clipa/clipa_results.csv`` and ``openclip-scaling/{zeroshot_results,trained_models_info}.csv`` under the given
folder and writes, next to this script:

* ``results.csv``: one row per distinct training run with a zero-shot ImageNet-1k top-1, in the project's schema
  (canonical model and dataset names, the whole schedule in the papers' shorthand so that
  ``planner.schedule.parse_schedule`` rebuilds every stage);
* ``finetune_masking.csv``: CLIPA-v2 Figure 2, the drop in top-1 caused by random image-token masking during a 128M
  sample full-resolution fine-tune, per model size and share of tokens kept;
* ``excluded.csv``: every source row that did not become a row above, with the reason (duplicates name the row
  that was kept);
* ``README.md``: the schema, the curation rules and the exclusion list.

Every source row must be claimed by exactly one rule below; an unclaimed or doubly claimed row stops the script, so
a new row in the shared data cannot be dropped silently. Decisions that go beyond the source table (recipe facts
filled in, samples inferred) are written into the row's ``notes``. The output is deterministic: running the script
twice gives byte-identical files (tests check this against the committed copies when ../shared is present).
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: the planner package is the repository's
    sys.path.insert(0, str(REPO))

from planner.datasets import canonical_dataset  # noqa: E402
from planner.recipe import format_schedule  # noqa: E402
from planner.schedule import parse_schedule  # noqa: E402
from planner.variants import decode_variant  # noqa: E402

RESULTS_COLUMNS = [
    "key", "family", "model", "dataset", "schedule", "top1", "value_kind", "gpu_hours", "gpu_hours_kind",
    "source", "also_in", "citation", "notes",
]
CURVE_COLUMNS = [
    "model", "dataset", "finetune", "keep_ratio", "kept_image_tokens", "top1_drop", "value_kind", "source",
    "citation", "notes",
]
EXCLUDED_COLUMNS = ["file", "row", "source", "model", "dataset", "top1", "reason"]  # row: 1-based data row

# The LAION-400M epoch used by OpenCLIP (trained_models_info.csv, samples_per_epoch of the 400M runs): the PRETRAINED.md
# baselines are "32 epochs" of it.
OPENCLIP_L400M_EPOCH = 407_332_084
VALUE_KIND_RANK = {"reported": 0, "digitized": 1, "external": 2}


@dataclass
class Keep:
    """A source row that becomes (or restates) a run in results.csv."""

    model: str
    dataset: str
    schedule: str
    family: str
    notes: str = ""
    gpu_hours: float | None = None
    gpu_hours_kind: str = ""


@dataclass
class Curve:
    model: str
    dataset: str
    keep_ratio: float
    drop: float
    notes: str = ""


@dataclass
class Exclude:
    reason: str


@dataclass
class Rule:
    """Claims the source rows for which ``match`` is true and turns each into a Keep, Curve or Exclude."""

    name: str
    match: Callable[[dict[str, str]], bool]
    action: Callable[[dict[str, str]], Keep | Curve | Exclude]
    expect: int | None = None  # rows it must claim (None: at least one)
    claimed: list[int] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------------
# helpers

def _num(s: str) -> float | None:
    s = (s or "").strip()
    if not s:
        return None
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _value_kind(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith("reported"):
        return "reported"
    if raw.startswith("digitized"):
        return "digitized"
    if raw.startswith("external"):
        return "external"
    raise ValueError(f"unknown value_kind {raw!r}")


def _metric(row: dict[str, str], name: str) -> str:
    m = re.search(rf"{re.escape(name)}=([^;]+)", row.get("other_metrics", ""))
    if not m:
        raise ValueError(f"row has no {name} in other_metrics: {row.get('other_metrics')!r}")
    return m.group(1).strip()


def _pct(text: str) -> float:
    return float(text.replace("pts", "").replace("%", "").strip())


def _is(source: str, model: str | None = None, dataset: str | None = None, top1: float | None = None):
    def f(r: dict[str, str]) -> bool:
        if r["source"] != source:
            return False
        if model is not None and r["model"] != model:
            return False
        if dataset is not None and r["dataset"] != dataset:
            return False
        if top1 is not None and _num(r["zeroshot_in1k_top1"]) != top1:
            return False
        return True

    return f


def _keep(model: str, dataset: str, schedule: str, family: str = "clipa", notes: str = "",
          use_gpu_hours: bool = True, gpu_hours_kind: str = "reported"):
    def f(r: dict[str, str]) -> Keep:
        gh = _num(r["gpu_hours"]) if use_gpu_hours else None
        return Keep(model, dataset, schedule, family, notes, gh, gpu_hours_kind if gh is not None else "")

    return f


def _exclude(reason: str):
    return lambda r: Exclude(reason)


# ---------------------------------------------------------------------------------------------------------------------
# clipa/clipa_results.csv: one rule per distinct statement (the shorthand is the papers' own, with the recipe facts of
# docs/clipa-recipes.md where the table leaves them out)

H14_PRE = "12.8B@84/8"  # CLIPA-v2 H/14 and L/14 pre-training: 84 px (36 tokens), 8 syntax-masked text tokens
V2_FT = "512M@224/32~0.3 + 128M@336/32~0.4"
BASELINE_FT_NOTE = (
    "fine-tune batch 16,384 from clipa_jax/configs/model_h/unmask_tuning.py (the 1x full-token baseline)."
)
TABLE2_NOTE = (
    "Table 2 does not print the fine-tune length or resolution; filled from the recipe: the ablations start from the "
    "77.9 baseline (12.8B@84/8 + 128M@224/32, Table 3 'CLIPA-v1' row), and the 1x fine-tune is 128M samples at 224 "
    "(docs/clipa-recipes.md 2.3)."
)
V1_SAMPLES_NOTE = (
    "pre-training samples filled as 2.56B: the README says every CLIPA-v1 model was pre-trained for the same 6 "
    "epochs, which CLIPA-v2 Table 1 prints as 2.56B for the I37,T8 model of the same recipe (docs/clipa-recipes.md 2.2)."
)
PRETRAIN_ONLY_NOTE = "pre-training-only checkpoint (no fine-tune); eval resolution not stated by the source."


def _table2(r: dict[str, str]) -> Keep:
    strategy = _metric(r, "finetune_mask_strategy")
    ratio = _pct(_metric(r, "finetune_mask_ratio")) / 100
    mask = f"~{ratio:g}" + ("" if strategy == "random" else f":{strategy}")
    return Keep("H/14", "laion-2b", f"{H14_PRE} + 128M@224/32{mask}", "clipa", TABLE2_NOTE)


def _curve(r: dict[str, str]) -> Curve:
    keep = _pct(_metric(r, "unmask_ratio")) / 100
    drop = _pct(_metric(r, "in1k_drop_vs_100pct_unmasked"))
    return Curve(r["model"], canonical_dataset(r["dataset"]), keep, drop)


CLIPA_RULES: list[Rule] = [
    # --- CLIPA-v2 Table 1 ---------------------------------------------------------------------------------------
    Rule("v2 T1 L/16", _is("CLIPA-v2 Table 1", "L/16", "LAION-400M"),
         _keep("L/16", "laion-400m", "2.56B@96/8,batch=32768 + 128M@224/32,batch=7168",
               notes="CLIPA-L/16 (I37,T8); 96 px and both batches from clipa_torch/scripts/exp/gpu/vit_l16/i37_t8_*.sh; "
                     "the fine-tune is 131,072,000 samples in the scripts ('128M')."), 1),
    Rule("v2 T1 H/14 400M", _is("CLIPA-v2 Table 1", "H/14", "LAION-400M"),
         _keep("H/14", "laion-400m", "2.56B@84/8 + 128M@224/32",
               notes="pre-training and fine-tune batches not stated (parser defaults 65,536 / 32,768)."), 1),
    Rule("v2 T1 H/14 2B 2.56B", _is("CLIPA-v2 Table 1", "H/14", "LAION-2B", 74.1),
         _keep("H/14", "laion-2b", "2.56B@84/8 + 128M@224/32",
               notes="pre-training and fine-tune batches not stated (parser defaults 65,536 / 32,768)."), 1),
    Rule("v2 T1 H/14 2B 12.8B", _is("CLIPA-v2 Table 1", "H/14", "LAION-2B", 77.9),
         _keep("H/14", "laion-2b", f"{H14_PRE} + 128M@224/32,batch=16384",
               notes="the baseline ('CLIPA-v1' row) of Tables 2 and 3; " + BASELINE_FT_NOTE), 1),
    # --- Table 2 (masking strategies in the fine-tune) -------------------------------------------------------------
    Rule("v2 T2", _is("CLIPA-v2 Table 2"), _table2, 9),
    # --- Table 3 (fine-tune ablations on the 77.9 baseline) ---------------------------------------------------------
    Rule("v2 T3 baseline", _is("CLIPA-v2 Table 3", top1=77.9),
         _keep("H/14", "laion-2b", f"{H14_PRE} + 128M@224/32,batch=16384", notes=BASELINE_FT_NOTE), 1),
    Rule("v2 T3 (1)", _is("CLIPA-v2 Table 3", top1=78.0),
         _keep("H/14", "laion-2b", f"{H14_PRE} + 128M@224/32~0.3",
               notes="1.3x fine-tune speed-up at +0.1 (text)."), 1),
    Rule("v2 T3 (2)", _is("CLIPA-v2 Table 3", top1=78.6),
         _keep("H/14", "laion-2b", f"{H14_PRE} + 512M@224/32~0.3",
               notes="4x fine-tune schedule (unmask_tuning_224_scheduleX4.py: 524,288,000 samples, batch 32,768)."), 1),
    Rule("v2 T3 (3)", _is("CLIPA-v2 Table 3", top1=78.5),
         _keep("H/14", "laion-2b", f"{H14_PRE} + 640M@224/32~0.3",
               notes="text: a longer fine-tune gives no substantial gain."), 1),
    Rule("v2 T3 (4)", _is("CLIPA-v2 Table 3", top1=78.9),
         _keep("H/14", "laion-2b", f"{H14_PRE} + 640M@336/32~0.4", notes="direct fine-tune at 336 px."), 1),
    Rule("v2 T3 (5)", _is("CLIPA-v2 Table 3", top1=79.1),
         _keep("H/14", "laion-2b", f"{H14_PRE} + {V2_FT}", notes="progressive fine-tune, the released CLIPA-v2 H/14."), 1),
    # --- Table 4 (system-level comparison) ---------------------------------------------------------------------------
    Rule("v2 T4 H/14", _is("CLIPA-v2 Table 4", "H/14", "LAION-2B"),
         _keep("H/14", "laion-2b", f"{H14_PRE} + {V2_FT}"), 1),
    Rule("v2 T4 OpenCLIP L/14", _is("CLIPA-v2 Table 4", "L/14 (OpenCLIP)", "DataComp-1B"),
         _keep("L/14", "datacomp-1b", "12.8B@224/77,batch=90112", family="openclip",
               notes="OpenCLIP ViT-L-14 datacomp_xl_s13b_b90k: full resolution, context 77, no fine-tune. Batch "
                     "90k (tag b90k; 90,112 assumed = 88 x 1024). The paper's dollars use an unexplained 1.14 $/GPU-h."), 1),
    Rule("v2 T4 OpenCLIP bigG/14", _is("CLIPA-v2 Table 4", "G/14 (OpenCLIP, = bigG/14)", "LAION-2B"),
         _keep("bigG/14", "laion-2b", "32B@224/77~0.5 + 6.7B@224/77", family="openclip",
               notes="OpenCLIP ViT-bigG-14 laion2b_s39b_b160k: 32B samples with FLIP 50% random masking, then 6.7B "
                     "unmasked (printed '32.0B@224 + 6.7B@224'); batches not stated (160k in the tag)."), 1),
    Rule("v2 T4 L/14", _is("CLIPA-v2 Table 4", "L/14", "DataComp-1B", 79.7),
         _keep("L/14", "datacomp-1b", f"{H14_PRE} + 512M@224/32~0.3",
               notes="batches not stated (no L/14 config in the repo; parser defaults). Mask 0.3 per the v2 recipe. "
                     "An early draft printed 80.0 (corrected to 79.7 the same day)."), 1),
    Rule("v2 T4 L/14 336", _is("CLIPA-v2 Table 4", "L/14", "DataComp-1B", 80.3),
         _keep("L/14", "datacomp-1b", f"{H14_PRE} + {V2_FT}",
               notes="GPU-hours cumulative (4,008 + 512 printed as an increment). Masks 0.3 / 0.4 per the v2 recipe."), 1),
    # --- figures ------------------------------------------------------------------------------------------------------
    Rule("v2 F1", _is("CLIPA-v2 Figure 1"),
         _exclude("restates OpenCLIP's L/14 LAION-2B s32B model (75.3), kept from the OpenCLIP scaling study "
                  "(Model-L-14_Data-2B_Samples-34B, 75.2); the figure does not name the dataset."), 1),
    Rule("v2 F2", _is("CLIPA-v2 Figure 2"), _curve, 28),
    Rule("v2 draft F2", _is("CLIPA-v2 draft Figure 2 (superseded)"),
         _exclude("superseded: draft-only curve (H/14* on LAION-2B, H/14-336*), replaced in the arXiv version by the "
                  "H/14 LAION-400M curve kept in finetune_masking.csv."), 14),
    Rule("v2 text FLIP", _is("CLIPA-v2 text (Sec.3 'Scaling up CLIPA')"),
         _exclude("derived, not printed (77.9 - 0.3), and FLIP's H/14 schedule is not in the data."), 1),
    Rule("acc_compute figure", lambda r: r["source"] == "CLIPA repo figure acc_compute.png",
         _exclude("figure points without dataset, token counts or schedule (only GFLOPs x samples): the run behind "
                  "each point cannot be identified."), 18),
    # --- CLIPA-v1 weights (repo READMEs, open_clip docs/clipa.md) -------------------------------------------------------
    Rule("v1 B/16 ft", _is("CLIPA repo clipa_torch/README.md (CLIPA-v1 weights)", "B/16"),
         _keep("B/16", "laion-400m", "2.56B@112/16:truncate + 128M@224/16,batch=8192",
               notes="CLIPA-B/16 (I50,T16). " + V1_SAMPLES_NOTE + " Text stays at 16 tokens in the fine-tune "
                     "(i50_t16_finetune.sh); truncation, no syntax mask, in both stages. Fine-tune 131,072,000 samples "
                     "('0.36 epoch')."), 1),
    Rule("v1 B/16 pre", _is("open_clip docs/clipa.md (pre-trained, before fine-tune)", "B/16"),
         _keep("B/16", "laion-400m", "2.56B@112/16:truncate",
               notes="CLIPA-B/16 (I50,T16) before fine-tuning. " + V1_SAMPLES_NOTE + " " + PRETRAIN_ONLY_NOTE), 1),
    Rule("v1 L/16 I17 ft", _is("CLIPA repo clipa_torch/README.md (CLIPA-v1 weights)", "L/16", top1=67.8),
         _keep("L/16", "laion-400m", "2.56B@64/16,batch=32768 + 128M@224/16,batch=7168",
               notes="CLIPA-L/16 (I17,T16). " + V1_SAMPLES_NOTE + " Syntax masking in pre-training; text stays at 16 "
                     "in the fine-tune (i17_t16 scripts)."), 1),
    Rule("v1 L/16 I17 pre", _is("open_clip docs/clipa.md (pre-trained, before fine-tune)", "L/16", top1=60.3),
         _keep("L/16", "laion-400m", "2.56B@64/16,batch=32768",
               notes="CLIPA-L/16 (I17,T16) before fine-tuning. " + V1_SAMPLES_NOTE + " " + PRETRAIN_ONLY_NOTE), 1),
    Rule("v1 L/16 I37 ft", _is("CLIPA repo clipa_torch/README.md (CLIPA-v1 weights)", "L/16", top1=69.3),
         _keep("L/16", "laion-400m", "2.56B@96/8,batch=32768 + 128M@224/32,batch=7168"), 1),
    Rule("v1 L/16 I37 pre", _is("open_clip docs/clipa.md (pre-trained, before fine-tune)", "L/16", top1=57.9),
         _keep("L/16", "laion-400m", "2.56B@96/8,batch=32768",
               notes="CLIPA-L/16 (I37,T8) before fine-tuning; 2.56B as in CLIPA-v2 Table 1. " + PRETRAIN_ONLY_NOTE), 1),
    # --- CLIPA repo READMEs (v2) ------------------------------------------------------------------------------------
    Rule("README H/14", lambda r: r["source"] in (
        "CLIPA repo README.MD", "CLIPA repo clipa_jax/README.MD (Fine-tuned Results)",
        "CLIPA repo clipa_torch/README.md (CLIPA-v2 weights)") and r["model"] == "H/14",
         lambda r: Keep("H/14", "laion-2b",
                        f"{H14_PRE} + {V2_FT}" if "128M@336" in r["finetune"] else f"{H14_PRE} + 512M@224/32~0.3",
                        "clipa", "", _num(r["gpu_hours"]), "reported"), 4),
    Rule("README L/14", lambda r: r["source"] in (
        "CLIPA repo README.MD", "CLIPA repo clipa_jax/README.MD (Fine-tuned Results)",
        "CLIPA repo clipa_torch/README.md (CLIPA-v2 weights)") and r["model"] == "L/14",
         lambda r: Keep("L/14", "datacomp-1b",
                        f"{H14_PRE} + {V2_FT}" if "128M@336" in r["finetune"] else f"{H14_PRE} + 512M@224/32~0.3",
                        "clipa", "", _num(r["gpu_hours"]), "reported"), 5),
    Rule("README pre-trained H/14 70", _is("CLIPA repo clipa_jax/README.MD (Pre-trained weights)", "H/14", top1=70.1),
         _keep("H/14", "laion-2b", "12.8B@70/8", notes="70 px (25 tokens). " + PRETRAIN_ONLY_NOTE), 1),
    Rule("README pre-trained H/14 84", _is("CLIPA repo clipa_jax/README.MD (Pre-trained weights)", "H/14", top1=72.1),
         _keep("H/14", "laion-2b", "12.8B@84/8", notes=PRETRAIN_ONLY_NOTE), 1),
    Rule("README pre-trained L/14", _is("CLIPA repo clipa_jax/README.MD (Pre-trained weights)", "L/14"),
         _keep("L/14", "datacomp-1b", "12.8B@84/8",
               notes=PRETRAIN_ONLY_NOTE + " Batch not stated for L/14 (parser default)."), 1),
    # --- OpenCLIP LAION-400M baselines (external to the CLIPA papers) ------------------------------------------------
    Rule("OC PRETRAINED B/32", _is("OpenCLIP docs/PRETRAINED.md (baseline, external)", "B/32 (OpenCLIP)"),
         _keep("B/32", "laion-400m", f"{32 * OPENCLIP_L400M_EPOCH}@224/77,batch=32768", family="openclip",
               notes="OpenCLIP laion400m_e32: 32 epochs of OpenCLIP's LAION-400M epoch (407,332,084 samples, from "
                     "trained_models_info.csv). A different run from the scaling study's B/32 400M 13B (batch 86k). "
                     "GPU-hours are A100-40GB.", gpu_hours_kind="reported (A100-40GB)"), 1),
    Rule("OC PRETRAINED B/16", _is("OpenCLIP docs/PRETRAINED.md (baseline, external)", "B/16 (OpenCLIP)"),
         _keep("B/16", "laion-400m", f"{32 * OPENCLIP_L400M_EPOCH}@224/77,batch=33792", family="openclip",
               gpu_hours_kind="reported (A100-40GB)"), 1),
    Rule("OC PRETRAINED L/14", _is("OpenCLIP docs/PRETRAINED.md (baseline, external)", "L/14 (OpenCLIP)"),
         _keep("L/14", "laion-400m", f"{32 * OPENCLIP_L400M_EPOCH}@224/77,batch=38400", family="openclip",
               notes="OpenCLIP laion400m_e32 (32 epochs, batch 38,400 on 400 A100-40GB): a different run from the "
                     "scaling study's L/14 400M 13B (batch 86k, 73.1). GPU-hours are A100-40GB.",
               gpu_hours_kind="reported (A100-40GB)"), 1),
    # --- open_clip docs/openclip_results.csv: OpenCLIP's own re-evaluation of released weights -----------------------
    Rule("OC results B/32 400M", _is("open_clip docs/openclip_results.csv (independent eval, external)",
                                     "B/32 (OpenCLIP)", "LAION-400M"),
         _exclude("evaluation artefact: 60.24 is the laion400m_e32 B/32 weights evaluated with the non-QuickGELU "
                  "architecture; the training-side value 62.96 (PRETRAINED.md) is kept."), 1),
    Rule("OC results others", lambda r: r["source"] == "open_clip docs/openclip_results.csv (independent eval, external)"
         and r["model"] != "B/32 (OpenCLIP)",
         lambda r: Exclude("independent re-evaluation of a released model whose own reported value is kept "
                           f"({r['model']}, {r['dataset']}); the re-evaluation differs by at most 0.15 points."), 8),
]


# ---------------------------------------------------------------------------------------------------------------------
# openclip-scaling

OC_ARCH = {"ViT-B-32": "B/32", "ViT-B-16": "B/16", "ViT-L-14": "L/14"}
OC_DATA = {"LAION-80M": "laion-80m", "LAION-400M": "laion-400m", "LAION-2B": "laion-2b"}
OC_CITATION = (
    "Cherti et al., 'Reproducible scaling laws for contrastive language-image learning', CVPR 2023; "
    "LAION-AI/scaling-laws-openclip @652b1e7 zeroshot_results.csv + trained_models_info.csv"
)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def openclip_rows(folder: Path) -> tuple[list[tuple[dict[str, Any], Keep]], list[dict[str, Any]]]:
    """Final (cosine-completed) OpenCLIP scaling runs: ImageNet-1k zero-shot acc1, full resolution, context 77."""
    zs = _read_csv(folder / "zeroshot_results.csv")
    info = {r["name"]: r for r in _read_csv(folder / "trained_models_info.csv")}
    kept, excluded = [], []
    for i, r in enumerate(zs):
        if r["downstream_dataset"] != "imagenet1k":
            continue
        meta = {"file": "openclip-scaling/zeroshot_results.csv", "row": i + 1, "source": "OpenCLIP scaling study",
                "model": r["arch"], "dataset": r["upstream_dataset"], "top1": round(100 * float(r["acc1"]), 2)}
        if r["upstream_dataset"] not in OC_DATA:
            excluded.append({**meta, "reason": f"trained on {r['upstream_dataset']} (OpenAI's private WIT-400M), "
                                               "not one of the project's datasets."})
            continue
        ti = info.get(r["name"])
        if ti is None:
            raise SystemExit(f"zeroshot_results.csv data row {i + 1}: run {r['name']!r} missing from trained_models_info.csv")
        samples = int(round(float(r["samples_seen"])))
        batch = int(ti["gpus"]) * int(ti["local_bs"])
        gpu_hours = samples / float(ti["samples_per_sec"]) * int(ti["gpus"]) / 3600
        note = (f"run {r['name'].removesuffix('.pt')}: lr {ti['lr']} (peak), warmup {ti['warmup']} steps, "
                f"{ti['epochs']} epochs on {ti['gpus']} GPUs; full resolution, context 77, no fine-tune. GPU-hours "
                "derived as samples / throughput x GPUs (A100-40GB, JUWELS Booster).")
        keep = Keep(OC_ARCH[r["arch"]], OC_DATA[r["upstream_dataset"]], f"{samples}@224/77,batch={batch}",
                    "openclip", note, round(gpu_hours), "derived (A100-40GB)")
        kept.append(({**meta, "value_kind": "reported", "top1": round(100 * float(r["acc1"]), 3),
                      "citation": OC_CITATION, "source_rank": 0}, keep))
    return kept, excluded


# ---------------------------------------------------------------------------------------------------------------------
# assembling

def _source_rank(source: str) -> int:
    """Which statement of a run to keep: paper tables, then READMEs, then external documents."""
    if source.startswith("CLIPA-v2 Table") or source == "OpenCLIP scaling study":
        return 0
    if source.startswith("CLIPA repo") or source.startswith("open_clip docs/clipa.md"):
        return 1
    return 2


def canonical_schedule(model: str, schedule: str) -> tuple[str, str]:
    """(shorthand as format_schedule writes it, the run's identity: samples/resolution/text/masks per stage)."""
    stages = parse_schedule(schedule, model)
    ident = " + ".join(
        f"{s.samples}@{s.image_res}/{s.text_len}:{s.text_reduction.value}~{s.mask_ratio:g}:{s.image_mask.value}"
        for s in stages
    )
    return format_schedule(stages, model), ident


def curate(data: Path) -> dict[str, list[dict[str, Any]]]:
    clipa_path = data / "clipa" / "clipa_results.csv"
    rows = _read_csv(clipa_path)
    candidates: list[tuple[dict[str, Any], Keep]] = []
    curves: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    claims: dict[int, str] = {}
    for i, r in enumerate(rows):
        for rule in CLIPA_RULES:
            if rule.match(r):
                if i in claims:
                    raise SystemExit(f"clipa_results.csv data row {i + 1} claimed by both {claims[i]!r} and {rule.name!r}")
                claims[i] = rule.name
                rule.claimed.append(i)
        if i not in claims:
            raise SystemExit(f"clipa_results.csv data row {i + 1} ({r['source']}, {r['model']}) is claimed by no rule: "
                             "add a rule to curate.py")
    for rule in CLIPA_RULES:
        n = len(rule.claimed)
        if (rule.expect is not None and n != rule.expect) or n == 0:
            raise SystemExit(f"rule {rule.name!r} claimed {n} rows, expected {rule.expect}")
    for i, r in enumerate(rows):
        rule = next(ru for ru in CLIPA_RULES if ru.name == claims[i])
        out = rule.action(r)
        meta = {"file": "clipa/clipa_results.csv", "row": i + 1, "source": r["source"], "model": r["model"],
                "dataset": r["dataset"], "top1": _num(r["zeroshot_in1k_top1"])}
        if isinstance(out, Exclude):
            excluded.append({**meta, "reason": out.reason})
        elif isinstance(out, Curve):
            model = decode_variant(out.model).name
            ratio = round(1 - out.keep_ratio, 6)
            patches = (224 // decode_variant(model).patch) ** 2
            curves.append({
                "model": model, "dataset": out.dataset,
                "finetune": f"128M@224/32~{ratio:g}", "keep_ratio": out.keep_ratio,
                "kept_image_tokens": max(1, int(round(patches * out.keep_ratio))),
                "top1_drop": out.drop, "value_kind": _value_kind(r["value_kind"]), "source": r["source"],
                "citation": r["citation"],
                "notes": "drop relative to the same model fine-tuned without masking (128M samples at 224 px); "
                         "pre-training on LAION-400M, schedule not stated (the drop is measured at a fixed "
                         "pre-training).",
            })
        else:
            vk = _value_kind(r["value_kind"])
            candidates.append(({**meta, "value_kind": vk, "citation": r["citation"],
                                "source_rank": _source_rank(r["source"])}, out))
    oc_kept, oc_excluded = openclip_rows(data / "openclip-scaling")
    candidates += oc_kept
    excluded += oc_excluded
    excluded.append({"file": "openclip-scaling/imagenet_zeroshot_learning_curves.csv", "row": "all",
                     "source": "OpenCLIP scaling study", "model": "", "dataset": "", "top1": "",
                     "reason": "per-epoch evaluations inside runs whose cosine schedule was set for the final sample "
                               "count: an intermediate point is not the accuracy of a run of that length (the "
                               "learning rate has not decayed), so it would bias the samples exponent."})

    # one row per distinct run: group statements by (model, dataset, stages) and keep the best-sourced one
    groups: dict[tuple[str, str, str], list[tuple[dict[str, Any], Keep, str]]] = {}
    for meta, keep in candidates:
        model = decode_variant(keep.model).name
        dataset = canonical_dataset(keep.dataset)
        sched, ident = canonical_schedule(model, keep.schedule)
        groups.setdefault((model, dataset, ident), []).append((meta, keep, sched))
    results = []
    for (model, dataset, _), members in groups.items():
        members.sort(key=lambda m: (VALUE_KIND_RANK[m[0]["value_kind"]], m[0]["source_rank"], m[0]["row"]))
        meta, keep, sched = members[0]
        values = [m[0]["top1"] for m in members]
        if max(values) - min(values) > 0.5:
            raise SystemExit(f"{model} {dataset} {sched}: statements disagree ({values}); distinct runs?")
        gpu_hours, gh_kind, gh_note = keep.gpu_hours, keep.gpu_hours_kind, ""
        if gpu_hours is None:
            for m in members[1:]:
                if m[1].gpu_hours is not None:
                    gpu_hours, gh_kind = m[1].gpu_hours, m[1].gpu_hours_kind
                    gh_note = f" GPU-hours from {m[0]['source']}."
                    break
        notes = " ".join(filter(None, [keep.notes] + [m[1].notes for m in members[1:] if m[1].notes
                                                      and m[1].notes != keep.notes])) + gh_note
        results.append({
            "family": keep.family, "model": model, "dataset": dataset, "schedule": sched, "top1": meta["top1"],
            "value_kind": meta["value_kind"],
            "gpu_hours": "" if gpu_hours is None else f"{gpu_hours:g}", "gpu_hours_kind": gh_kind,
            "source": meta["source"],
            "also_in": "; ".join(sorted({f"{m[0]['source']} ({m[0]['top1']:g})" for m in members[1:]})),
            "citation": meta["citation"], "notes": notes.strip(),
        })
        for m in members[1:]:
            excluded.append({"file": m[0]["file"], "row": m[0]["row"], "source": m[0]["source"],
                             "model": m[0]["model"], "dataset": m[0]["dataset"], "top1": m[0]["top1"],
                             "reason": f"restates the run kept from {meta['source']} ({model}, {dataset}, {sched})."})
    results.sort(key=lambda r: (r["family"], r["model"], r["dataset"], r["schedule"]))
    for r in results:
        slug = re.sub(r"[^a-z0-9]+", "-", f"{r['family']} {r['model']} {r['dataset']}".lower()).strip("-")
        r["key"] = slug
    counts: dict[str, int] = {}
    for r in results:  # stable unique keys: family-model-dataset-N
        counts[r["key"]] = counts.get(r["key"], 0) + 1
        r["key"] = f"{r['key']}-{counts[r['key']]}"
    curves.sort(key=lambda c: (decode_variant(c["model"]).image.width, -c["keep_ratio"]))
    excluded.sort(key=lambda e: (e["file"], str(e["row"]).zfill(6)))
    return {"results": results, "curves": curves, "excluded": excluded}


def _csv_text(rows: list[dict[str, Any]], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    return buf.getvalue()


README_HEAD = """\
# Published results (curated)

Written by `curate.py` from the shared research data; do not edit by hand. Regenerate with

    .venv/bin/python results/published/curate.py ../shared/data

The CSVs are committed: the planner reads only this folder at run time (`planner.results.load_results`).

## results.csv: one row per distinct training run

| column | meaning |
|---|---|
| key | stable row id (family-model-dataset-N) |
| family | `clipa` (token-reduced CLIPA recipes) or `openclip` (full-resolution OpenCLIP runs) |
| model | canonical variant (`planner.variants.decode_variant`): B/32, B/16, L/16, L/14, H/14, bigG/14 |
| dataset | canonical dataset (`planner.datasets`): laion-80m, laion-400m, laion-2b, datacomp-1b |
| schedule | every stage in the papers' shorthand; `parse_schedule(schedule, model)` rebuilds the stages |
| top1 | zero-shot ImageNet-1k top-1, percent |
| value_kind | reported (printed number) / digitized (read off a figure) / external (a document outside the paper) |
| gpu_hours, gpu_hours_kind | A100 GPU-hours where known: reported (CLIPA's A100-80GB estimate), reported (A100-40GB) or derived (A100-40GB, samples / throughput x GPUs) |
| source, also_in | the statement kept, and the other sources that restate the same run (with their values) |
| citation, notes | where it was read; every fact added from the recipes or inferred |

Rules:
* A run is identified by model, dataset and its stages (samples, resolution, text length and reduction, mask). When
  several sources state one run, the one kept is the best-sourced: reported before digitized before external, paper
  tables before READMEs before other documents. Paper drafts ("superseded") lose to the final version.
* Sample counts are the printed ones (12.8B, 512M, 128M, 640M, 2.56B); the configs' exact counts
  (12,811,670,000; 524,288,000; 131,072,000) are at most 2.4% larger.
* Facts the source leaves out are filled from `docs/clipa-recipes.md` only where it states them, and each row says so
  in `notes`: the CLIPA-v1 pre-training length (2.56B, from v2 Table 1 for the same 6-epoch recipe), the Table 2
  fine-tune (128M at 224, the ablation baseline), masks and batches from the repo configs. Where a batch is unknown
  the parser's default stands (it does not enter the accuracy model).
* OpenCLIP scaling rows are the final evaluations of cosine-completed runs (full resolution 224, context 77, no
  fine-tune) from `zeroshot_results.csv` (imagenet1k acc1).

## finetune_masking.csv: CLIPA-v2 Figure 2

The inverse scaling law in fine-tuning: change in zero-shot top-1 (points; negative = worse) when a 128M-sample
fine-tune at 224 px keeps only `keep_ratio` of the image tokens (random masking), against the same fine-tune
unmasked, for S/16, B/16, L/16 and H/14 pre-trained on LAION-400M. Values were read from the PDF's vector coordinates
(about +-0.01). `finetune` is the masked fine-tune stage in the shorthand.

## Exclusions

Every source row that is not a row above, with the reason (also in `excluded.csv`):

"""


def render_readme(excluded: list[dict[str, Any]]) -> str:
    lines = [README_HEAD, "| file | row | source | model | dataset | top1 | reason |", "|---|---|---|---|---|---|---|"]
    for e in excluded:
        cells = [str(e.get(k, "")) for k in ("file", "row", "source", "model", "dataset", "top1", "reason")]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(out: dict[str, list[dict[str, Any]]], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "results.csv": _csv_text(out["results"], RESULTS_COLUMNS),
        "finetune_masking.csv": _csv_text(out["curves"], CURVE_COLUMNS),
        "excluded.csv": _csv_text(out["excluded"], EXCLUDED_COLUMNS),
        "README.md": render_readme(out["excluded"]),
    }
    written = []
    for name, text in files.items():
        p = folder / name
        p.write_text(text, encoding="utf-8")
        written.append(p)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path, help="the shared data folder (holding clipa/ and openclip-scaling/)")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder (default: this script's folder)")
    args = ap.parse_args(argv)
    out = curate(args.data)
    for p in write_outputs(out, args.out):
        print(p)
    print(f"{len(out['results'])} runs, {len(out['curves'])} curve points, {len(out['excluded'])} exclusions")
    return 0


if __name__ == "__main__":
    sys.exit(main())
