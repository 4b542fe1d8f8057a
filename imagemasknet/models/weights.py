"""Weights files: safetensors for models (no pickle, so no code runs when one is read), the training state
beside a run's last checkpoint, and building a registered model from a file."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from imagemasknet.core.files import atomic_write
from imagemasknet.models import build_model


def save_weights(path: Path, model: torch.nn.Module, metadata: dict[str, str] | None = None, half: bool = False) -> None:
    """``half``: store float16 copies of the learned weights (half the size; :func:`load_weights` casts
    them back to the model's float32). Batch-norm statistics stay float32: running variances span more
    than float16 resolves well."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        statistics = ("running_mean", "running_var")
        state = {k: v.half() if v.dtype == torch.float32 and not k.endswith(statistics) else v for k, v in state.items()}
    write_safetensors(path, state, {**(metadata or {}), **({"storage": "float16"} if half else {})})


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Tensors to a safetensors file, atomically and with the same bytes for the same content every time: the
    library writes its header in an order that changes from process to process, so the header is rewritten with
    sorted keys (a release's checksums then repeat)."""
    raw = save(tensors, metadata=metadata)
    length = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8:8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format pads its header with spaces to a multiple of 8 bytes
    canonical = len(header).to_bytes(8, "little") + header + raw[8 + length:]
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(canonical))


def save_state(path: Path, state: dict) -> None:
    """Training state beside ``last.safetensors`` (optimizer, scheduler, epoch, RNG): tensors, dicts,
    lists and numbers only, so :func:`load_state` can read it with ``weights_only=True``."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: Path) -> dict:
    """Read a :func:`save_state` file without unpickling arbitrary objects (no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable state is the same refusal
        raise WeightsError(f"cannot read training state {path}: {error}") from error


class WeightsError(RuntimeError):
    """A weights file that is missing, unreadable, or does not fit the model."""


def load_weights(path: Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load a safetensors file (no pickle, so no code runs) into ``model`` strictly."""
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as error:
        raise WeightsError(f"cannot read weights {path}: {error}") from error
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(f"weights {path} do not fit this model: {error}") from error
    return model


def load_model(arch: str, weights: Path, image_size: int = 256, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Build a registered model and fill it from a safetensors file, in eval mode, its weights channels-last
    (oneDNN's convolutions run a batch-1 scan about a fifth faster so on a 2-core CPU: 23.3 against 29.5 ms for
    lesion-effnet-lite0, benchmarks/latency.py; the same float32 arithmetic)."""
    model = build_model(arch, image_size=image_size)
    load_weights(weights, model)
    return model.to(device).to(memory_format=torch.channels_last).eval()
