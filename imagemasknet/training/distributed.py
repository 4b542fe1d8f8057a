"""Data-parallel training on PyTorch's own engine: ``torch.distributed`` started by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous (``MASTER_ADDR``/``PORT``)
for every process; :func:`init` joins the process group from them (NCCL when the process trains on a
GPU, gloo on CPU) with a timeout, so a stuck collective ends in an error instead of a hang. Outside
torchrun (``WORLD_SIZE`` unset or 1) every helper here is a no-op and the training loop is the
single-process one, unchanged.

The loop (``trainer.py``, ``step.py``) uses: :func:`init`/:func:`cleanup`; :func:`is_main` (only rank 0 writes run
files); :func:`all_reduce_sum`/:func:`all_reduce_mean` (epoch tallies); :func:`share_denominators`
(loss normalisers over the global batch, so gradients equal a single process's); :func:`broadcast` /
:func:`on_main` (values and errors decided on rank 0); :func:`main_first` (rank 0 fills the decode cache
before the others read it); :func:`sync_buffers` and :func:`gather_predictions` (sharded evaluation
that equals a single-process one).
"""
from __future__ import annotations

import datetime as dt
import os
import signal
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from imagemasknet.core.device import pick_device
from imagemasknet.evaluation.evaluate import Predictions

T = TypeVar("T")

#: Seconds a collective may wait for the other ranks before it fails (``IMAGEMASKNET_DIST_TIMEOUT``).
DEFAULT_TIMEOUT_S = 900
#: Key under which a failing rank leaves its error for rank 0 in the rendezvous store.
FAILURE_KEY = "imagemasknet/failure"


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> World:
    """Rank, world size and local rank as torchrun set them (a single process otherwise)."""
    def read(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise ValueError(f"{name}={os.environ[name]!r} is not an integer") from None

    return World(read("RANK", 0), read("WORLD_SIZE", 1), read("LOCAL_RANK", 0))


def launched() -> bool:
    """True when this process is one of several started by torchrun."""
    return env_world().enabled


def device_for(name: str, world: World) -> torch.device:
    """The device this rank trains on: with ``auto`` or ``cuda``, GPU ``LOCAL_RANK`` when CUDA is
    available, else the CPU (MPS has no process-group backend)."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    if name == "cuda":
        raise ValueError("device: cuda asked for but CUDA is not available")
    if name.startswith("cuda:"):
        return torch.device(name)
    if name == "mps":
        raise ValueError("device: mps has no torch.distributed backend; use --device cpu under torchrun")
    return torch.device("cpu")


def timeout_s() -> float:
    return float(os.environ.get("IMAGEMASKNET_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def init(device_name: str = "auto") -> tuple[World, torch.device]:
    """Join the process group torchrun prepared (a no-op in a single process).

    Returns this rank's :class:`World` and device. The backend follows the device: NCCL for CUDA,
    gloo otherwise.
    """
    world = env_world()
    if not world.enabled:
        return world, _single_device(device_name)
    device = device_for(device_name, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend, timeout=dt.timedelta(seconds=timeout_s()), **kwargs)
    return World(dist.get_rank(), dist.get_world_size(), world.local_rank, backend), device


def _single_device(name: str) -> torch.device:
    return pick_device(name)


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def cleanup() -> None:
    """Leave the process group (safe to call twice, or when it never started)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - a group whose peer died may refuse a clean teardown
            pass


def _reduce_device() -> torch.device:
    if active() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float] | tuple[float, ...]) -> list[float]:
    """Element-wise sum over ranks of a few numbers (float64, so counts stay exact)."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor(list(values), dtype=torch.float64, device=_reduce_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_reduce_mean(values: list[float] | tuple[float, ...]) -> list[float]:
    n = world_size()
    return [v / n for v in all_reduce_sum(values)]


def all_gather(value: T) -> list[T]:
    """Every rank's ``value`` (any picklable object), in rank order."""
    if not active():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def share_denominators(local: torch.Tensor) -> torch.Tensor:
    """Local loss normalisers (e.g. the batch's summed class weights, its lesion-scan count) →
    this rank's share of the global ones: ``sum over ranks / world size``.

    A rank that divides its summed loss by this share, and DDP's averaging of gradients over ranks,
    together give exactly the gradient of one process dividing the whole global batch's summed loss
    by the global normaliser. Identity in a single process.
    """
    if not active():
        return local
    shared = local.detach().clone()
    dist.all_reduce(shared, op=dist.ReduceOp.SUM)
    return shared / dist.get_world_size()


def broadcast(value: T, src: int = 0) -> T:
    """``value`` as rank ``src`` has it, on every rank (any picklable object)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only; every rank returns its result, or raises the error it raised."""
    if not active():
        return fn()
    outcome: tuple[str, Any] = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", fn())
        except Exception as error:  # noqa: BLE001 - re-raised on every rank below
            outcome = ("error", error)
    kind, value = broadcast(outcome)
    if kind == "error":
        raise value
    return value


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache); the others run it once rank 0 is done."""
    if not active():
        yield
        return
    if not is_main():
        dist.barrier()
    yield
    if is_main():
        dist.barrier()


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (batch-norm running statistics) to every rank. DDP broadcasts them at the
    start of each training forward, so after the last step each rank holds its own; evaluation and
    checkpoints use rank 0's."""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


def shard_bounds(n: int, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Contiguous slice ``[lo, hi)`` of ``n`` items for a rank: concatenating the shards in rank order
    gives the items in their original order."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    per = -(-n // world)
    return min(n, rank_ * per), min(n, (rank_ + 1) * per)


def gather_predictions(predict: Callable[[list[str]], Any], ids: list[str]):
    """Sharded evaluation: each rank predicts its contiguous share of ``ids`` (``predict(ids)`` returns
    :class:`~imagemasknet.evaluation.evaluate.Predictions`); the shares are gathered in order, so every rank ends
    with exactly the predictions one process makes over all ``ids``."""
    if not active():
        return predict(ids)
    lo, hi = shard_bounds(len(ids))
    part = predict(ids[lo:hi]) if hi > lo else None
    parts = [p for p in all_gather(part) if p is not None]
    return Predictions(
        [i for p in parts for i in p.ids],
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.logits for p in parts]),
        np.concatenate([p.dice for p in parts]),
    )


def report_failure(error: BaseException) -> None:
    """Leave this rank's error in the rendezvous store so rank 0 can name it in ``status.json``."""
    if not active():
        return
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set(FAILURE_KEY, f"rank {dist.get_rank()}: {type(error).__name__}: {error}"[:2000])
    except Exception:  # noqa: BLE001 - best effort: the store may be gone already
        pass


def failure_notice(wait_s: float = 2.0) -> str | None:
    """Another rank's error message, if one left it in the store within ``wait_s`` seconds."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    try:
        store = dist.distributed_c10d._get_default_store()
        store.wait([FAILURE_KEY], dt.timedelta(seconds=wait_s))
        return store.get(FAILURE_KEY).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - nothing left, or the store itself went away with the job
        return None


def is_comm_error(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing (a peer died, the group timed out)."""
    backend_error = getattr(dist, "DistBackendError", ())
    if backend_error and isinstance(error, backend_error):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and any(
        s in text for s in ("gloo", "nccl", "connection closed", "connection reset", "broken pipe", "timed out",
                            "peer", "process group"))


def injected_fault(epoch: int, batch: int) -> None:
    """Fault injection for the tests: ``IMAGEMASKNET_TEST_KILL=RANK:EPOCH:BATCH`` makes that rank
    SIGKILL itself when it reaches that batch (1-based) of that epoch (1-based), like an OOM kill."""
    spec = os.environ.get("IMAGEMASKNET_TEST_KILL")
    if not spec or not active():
        return
    try:
        target_rank, target_epoch, target_batch = (int(p) for p in spec.split(":"))
    except ValueError:
        return
    if (rank(), epoch, batch) == (target_rank, target_epoch, target_batch):
        os.kill(os.getpid(), signal.SIGKILL)
