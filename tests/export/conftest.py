"""The real open_clip library for the export tests (the ``export`` extra: CPU torch, torchvision, open_clip_torch).

The tests fail (they do not skip) when it is missing: CI installs the extra, and a parity test that skips proves
nothing. PyPI's torchvision wheels are built against CUDA torch; beside the CPU torch this project installs, their
C extension (detection ops such as ``nms``) cannot load, and ``import torchvision`` then dies registering fake kernels
for two ops it never defined. open_clip uses torchvision for its image transforms only, never those ops, so when the
extension is unloadable the two op schemas are declared first (in a scratch ``torchvision`` op library) and
torchvision imports; its detection ops stay unusable, which nothing here needs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_TORCHVISION_OPS_WITH_FAKE_KERNELS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_scratch_libraries: list = []


def _declare_torchvision_ops_if_its_extension_cannot_load() -> None:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return
    extension = next(Path(spec.origin).parent.glob("_C*.so"), None)
    try:
        if extension is not None:
            torch.ops.load_library(str(extension))
            return
    except OSError:
        pass
    lib = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_OPS_WITH_FAKE_KERNELS:
        lib.define(schema)
    _scratch_libraries.append(lib)  # a Library object unregisters its ops when collected


@pytest.fixture(scope="session")
def open_clip():
    try:
        import torch  # noqa: F401  (only whether it is installed)
    except ImportError:
        pytest.fail("torch is not installed: pip install -e '.[export]' (the export extra)")
    _declare_torchvision_ops_if_its_extension_cannot_load()
    try:
        import open_clip as lib
    except ImportError as e:
        pytest.fail(f"open_clip is not importable ({e}): pip install -e '.[export]'")
    return lib
