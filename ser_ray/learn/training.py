"""The training loop shared by every torch model, run by Ray Train or in the caller's process.

``fit_torch`` runs one loop (:func:`_loop`) in one of two places:

- **Ray Train** (a :class:`ray.train.torch.TorchTrainer`): the training rows are a Ray Data
  dataset split across ``num_workers`` DDP workers (CPU or GPU), the validation rows are read
  whole by every worker so all ranks take the same early-stopping decision;
- **local**: one CPU worker's fit runs in the calling process (the ``cv`` driver, a sweep
  trial's own task) on the arrays it already holds. A Train run costs several seconds to start
  its controller and worker; a small model's fold is often shorter than that.

``trainer="auto"`` picks local for one CPU worker and Ray Train for DDP, GPUs or Ray Train
callbacks. Both write the same checkpoints (model + optimiser + early-stopping state) at most
every ``checkpoint_every_s``; rerunning with the same ``run_name`` and ``storage_path`` resumes
from the latest. On CPU, one seed gives the same weights on either.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ser_ray.config import pick_trainer
from ser_ray.runtime import quiet_data_progress

# Fault injection for the resume test: the worker raises once this epoch has been checkpointed.
FAIL_AT_EPOCH_ENV = "SER_RAY_FAIL_AT_EPOCH"


@dataclass
class TorchFit:
    state_dict: dict[str, Any]      # best weights (lowest validation loss), on CPU
    history: list[dict[str, float]]  # one dict per epoch: epoch, train_loss, val_loss, val_acc
    best_epoch: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    trainer: str = "ray_train"      # where it ran: local | ray_train
    wall_s: float = 0.0             # the whole fit_torch call
    loop_s: float = 0.0             # inside the training loop (rank 0); the rest is start-up

    @property
    def startup_s(self) -> float:
        return max(0.0, self.wall_s - self.loop_s)


def to_ray_dataset(X: np.ndarray, y: np.ndarray):
    """Ray Data dataset with columns ``x`` (tensor, X.shape[1:]) and ``y`` (int64)."""
    import pyarrow as pa
    import ray.data
    from ray.data.extensions import ArrowTensorArray

    quiet_data_progress()

    table = pa.table({"x": ArrowTensorArray.from_numpy(np.ascontiguousarray(X, np.float32)),
                      "y": pa.array(np.asarray(y, np.int64))})
    return ray.data.from_arrow(table)


def _optimizer(name: str, params, lr: float, weight_decay: float):
    import torch

    makers = {
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay),
    }
    if name not in makers:
        raise ValueError(f"optimizer {name!r} is not one of {sorted(makers)}")
    return makers[name]()




class _Rows:
    """A worker's shard of a Ray Data dataset, batched as (x, y) tensors.

    A shard that fits in ``in_memory_mb`` is read once and kept as tensors (each epoch then
    shuffles it with its own seed); a bigger one is streamed from Ray Data every epoch.
    """

    def __init__(self, shard, in_memory_mb: float, device):
        self.shard, self.device = shard, device
        self.tensors = None
        self.budget = in_memory_mb * 2**20

    @classmethod
    def from_arrays(cls, X: np.ndarray, y: np.ndarray, device) -> "_Rows":
        """Rows the process already holds (the local trainer): kept as tensors."""
        import torch

        rows = cls(None, 0, device)
        # copies: the arrays may be read-only views (Ray's object store, memory maps)
        rows.tensors = (torch.from_numpy(np.array(X, np.float32)).to(device),
                        torch.from_numpy(np.array(y, np.int64)).to(device))
        return rows

    def _load(self):
        import torch

        xs, ys, size = [], [], 0
        for b in self.shard.iter_torch_batches(batch_size=1024):
            xs.append(b["x"])
            ys.append(b["y"])
            size += b["x"].numel() * 4
            if size > self.budget:
                return None
        if not xs:
            return torch.zeros(0), torch.zeros(0, dtype=torch.long)
        return torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)

    def batches(self, batch_size: int, shuffle_seed: int | None = None):
        import torch

        if self.tensors is None and self.budget > 0 and self.shard is not None:
            self.tensors = self._load() or False
        if not self.tensors:
            for b in self.shard.iter_torch_batches(
                    batch_size=batch_size, device=self.device,
                    local_shuffle_buffer_size=None if shuffle_seed is None else 4 * batch_size,
                    local_shuffle_seed=shuffle_seed):
                yield b["x"], b["y"]
            return
        x, y = self.tensors
        order = torch.arange(len(y)) if shuffle_seed is None else \
            torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size].to(x.device)
            yield x[idx], y[idx]


class _RayTrainSession:
    """What the loop needs from Ray Train, inside a Train worker."""

    def __init__(self, cfg: dict[str, Any]):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.prepare_model = ray.train.torch.prepare_model
        self.train = _Rows(ray.train.get_dataset_shard("train"), cfg["in_memory_mb"], self.device)
        self.val = _Rows(ray.train.get_dataset_shard("val"), cfg["in_memory_mb"], self.device)

    def latest(self):
        """A context manager giving the latest checkpoint's folder, or None."""
        import contextlib

        import ray.train

        ckpt = ray.train.get_checkpoint()
        return ckpt.as_directory() if ckpt else contextlib.nullcontext(None)

    def report(self, metrics: dict[str, float], write) -> None:
        """Rank 0 writes the checkpoint files (``write(folder)``); every rank reports."""
        import ray.train

        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if self.rank == 0:
                write(d)
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


class _LocalSession:
    """The loop in this process on arrays it holds; checkpoints in ``folder/checkpoint_NNNNNN``
    (written whole, then renamed into place), the last two kept."""

    def __init__(self, folder: Path, train: tuple[np.ndarray, np.ndarray],
                 val: tuple[np.ndarray, np.ndarray]):
        import torch

        self.rank, self.world, self.folder = 0, 1, Path(folder)
        self.device = torch.device("cpu")
        self.train = _Rows.from_arrays(*train, self.device)
        self.val = _Rows.from_arrays(*val, self.device)

    @staticmethod
    def prepare_model(module):
        return module

    def checkpoints(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("checkpoint_*")
                      if len(p.name) == 17 and p.name[11:].isdigit())

    def latest(self):
        import contextlib

        found = self.checkpoints()
        return contextlib.nullcontext(str(found[-1]) if found else None)

    def report(self, metrics: dict[str, float], write) -> None:
        import shutil

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=self.folder))
        write(str(tmp))
        tmp.rename(self.folder / f"checkpoint_{int(metrics['epoch']):06d}")
        for old in self.checkpoints()[:-2]:
            shutil.rmtree(old, ignore_errors=True)


def _train_loop(cfg: dict[str, Any]) -> None:
    """Per-worker entry point of the Ray Train run."""
    quiet_data_progress()
    _loop(cfg, _RayTrainSession(cfg))


def _loop(cfg: dict[str, Any], session) -> None:
    """Train with early stopping on the session's rows; report and checkpoint through it."""
    import torch
    from safetensors.torch import load_file, save_file

    from ser_ray.models import build_model

    entered = time.time()
    rank = session.rank
    torch.manual_seed(cfg["seed"] * 1009 + rank)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(max(1, int(cfg["threads"])))
    hp = cfg["hp"]
    module = build_model(cfg["model"], tuple(cfg["input_shape"]), cfg["n_classes"], **cfg["options"])
    model = session.prepare_model(module)
    device = session.device
    # frozen parts of a pretrained backbone take no optimiser state
    opt = _optimizer(hp["optimizer"], [p for p in model.parameters() if p.requires_grad],
                     hp["lr"], hp["weight_decay"])
    weight = torch.tensor(cfg["class_weights"], dtype=torch.float32, device=device) \
        if cfg.get("class_weights") is not None else None
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    val_loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")
    reg = getattr(module, "regularization_loss", None)

    train, val = session.train, session.val
    accum = max(1, int(hp.get("grad_accum", 1)))
    sched = _schedule(opt, hp, cfg["train_rows"], session.world)
    autocast, scaler = _precision(hp.get("precision", "auto"), device)
    start, best, bad, best_epoch, history, spent = 0, float("inf"), 0, -1, [], 0.0
    best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    with session.latest() as d:
        if d:
            state = json.loads(Path(d, "state.json").read_text())
            module.load_state_dict(load_file(str(Path(d, "model.safetensors"))))
            best_state = load_file(str(Path(d, "best.safetensors")))
            opt.load_state_dict(torch.load(Path(d, "optimizer.pt"), weights_only=True))
            if sched is not None:
                sched.load_state_dict(torch.load(Path(d, "scheduler.pt"), weights_only=True))
            start, best, bad = state["epoch"] + 1, state["best"], state["bad"]
            best_epoch, history = state["best_epoch"], state["history"]
            spent = state.get("loop_s", 0.0)
            if state.get("stopped"):
                return

    last_report = time.time()
    fail_at = cfg.get("fail_at_epoch")
    if fail_at is None:
        fail_at = int(os.environ.get(FAIL_AT_EPOCH_ENV, "-1"))
    for epoch in range(start, hp["epochs"]):
        torch.manual_seed(cfg["seed"] * 1009 + rank * 101 + epoch)  # same dropout on resume
        model.train()
        total, n, waiting = 0.0, 0, 0
        opt.zero_grad()
        for x, y in train.batches(hp["batch_size"], shuffle_seed=cfg["seed"] * 7919 + epoch):
            with autocast():
                loss = loss_fn(model(x), y)
                if reg is not None:
                    loss = loss + reg()
            scaler.scale(loss / accum).backward()
            waiting += 1
            if waiting == accum:
                _step(opt, sched, scaler)
                waiting = 0
            total += float(loss.detach()) * len(y)
            n += len(y)
        if waiting:  # the epoch's last, partial accumulation
            _step(opt, sched, scaler)
        model.eval()
        vloss, vcorrect, vn = 0.0, 0, 0
        with torch.no_grad():
            for x, y in val.batches(256):
                with autocast():
                    out = model(x).float()
                vloss += float(val_loss_fn(out, y))
                vcorrect += int((out.argmax(1) == y).sum())
                vn += len(y)
        val_loss = vloss / max(vn, 1)
        if val_loss < best - 1e-6:
            best, bad, best_epoch = val_loss, 0, epoch
            best_state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
        else:
            bad += 1
        metrics = {"epoch": epoch, "train_loss": total / max(n, 1), "val_loss": val_loss,
                   "val_acc": vcorrect / max(vn, 1), "best_val_loss": best}
        history.append(metrics)
        stop = bad >= hp["patience"]
        # Each report waits for the controller's poll (~2 s), so short epochs report (and
        # checkpoint) at most every checkpoint_every_s; the last epoch always does.
        if stop or epoch == hp["epochs"] - 1 or time.time() - last_report >= cfg["checkpoint_every_s"]:
            last_report = time.time()

            def write(d: str) -> None:
                save_file({k: v.detach().cpu().contiguous()
                           for k, v in module.state_dict().items()},
                          str(Path(d, "model.safetensors")))
                save_file({k: v.contiguous() for k, v in best_state.items()},
                          str(Path(d, "best.safetensors")))
                torch.save(opt.state_dict(), Path(d, "optimizer.pt"))
                if sched is not None:
                    torch.save(sched.state_dict(), Path(d, "scheduler.pt"))
                Path(d, "state.json").write_text(json.dumps({
                    "epoch": epoch, "best": best, "bad": bad, "best_epoch": best_epoch,
                    "history": history, "stopped": stop,
                    "loop_s": spent + time.time() - entered}))

            session.report(metrics, write)
        if epoch == fail_at:
            raise RuntimeError(f"{FAIL_AT_EPOCH_ENV}={fail_at}: injected failure after epoch {epoch}")
        if stop:
            break


def _schedule(opt, hp: dict[str, Any], train_rows: int, world: int):
    """Linear warm-up then linear decay to 0 over the run's optimiser steps, when the model asks
    for a warm-up; the warm-up is at most a tenth of the steps (a small corpus is not all
    warm-up). None: a constant learning rate."""
    import torch

    if not hp.get("warmup_steps"):
        return None
    per_epoch = -(-max(1, -(-train_rows // world)) // (hp["batch_size"] * max(1, hp["grad_accum"])))
    total = max(1, per_epoch * hp["epochs"])
    warm = max(1, min(int(hp["warmup_steps"]), total // 10))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _precision(precision: str, device):
    """-> (autocast context factory, grad scaler): mixed precision on GPU (bf16 where the GPU
    has it, else fp16 with loss scaling); fp32 on CPU or with ``precision=fp32``."""
    import contextlib

    import torch

    if precision == "fp32" or device.type != "cuda":
        return contextlib.nullcontext, torch.amp.GradScaler("cuda", enabled=False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return (lambda: torch.autocast("cuda", dtype=dtype),
            torch.amp.GradScaler("cuda", enabled=dtype == torch.float16))


def _step(opt, sched, scaler) -> None:
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    if sched is not None:
        sched.step()


def resolve_hyperparameters(model: str, options: dict[str, Any]) -> dict[str, Any]:
    """Training hyperparameters of a model config (its defaults, overridden by ``options``)."""
    import dataclasses

    from ser_ray.models import model_config

    mc = dataclasses.asdict(model_config(model, **options))
    return {k: mc[k] for k in ("lr", "batch_size", "epochs", "patience", "optimizer",
                               "weight_decay", "grad_accum", "warmup_steps", "precision")}


def fit_torch(model: str, options: dict[str, Any], input_shape: Sequence[int], n_classes: int,
              train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], *,
              storage_path: str | Path, run_name: str, seed: int = 0,
              class_weights: np.ndarray | None = None, num_workers: int = 1,
              use_gpu: bool = False, cpus_per_worker: float = 1.0,
              callbacks: Sequence[Any] = (), in_memory_mb: float = 1024,
              checkpoint_every_s: float = 10.0, trainer: str = "auto",
              fail_at_epoch: int | None = None) -> TorchFit:
    """Train ``model``; return the weights of the epoch with the lowest validation loss.

    ``train``/``val`` are (X (n, *input_shape) float32, y (n,) int64). ``trainer`` says where
    the loop runs (:func:`pick_trainer`). Checkpoints go to ``storage_path/run_name``; calling
    again with the same pair (and trainer) resumes the interrupted run. Ray Train shards under
    ``in_memory_mb`` per worker are read from Ray Data once and kept as tensors. A checkpoint
    (and a metrics report) is written at most every ``checkpoint_every_s`` and after the last
    epoch; a resumed run repeats at most that much work.
    ``fail_at_epoch`` injects a worker failure after that epoch's checkpoint (for tests).
    """
    from safetensors.torch import load_file

    t0 = time.time()
    hp = resolve_hyperparameters(model, options)
    if len(val[1]) == 0:
        raise ValueError("fit_torch: the validation split is empty; early stopping needs one")
    where = pick_trainer(trainer, num_workers, use_gpu, callbacks)
    cfg = {
        "model": model, "options": options, "input_shape": list(input_shape),
        "n_classes": n_classes, "seed": seed, "hp": hp,
        "threads": max(1, int(cpus_per_worker)), "in_memory_mb": in_memory_mb,
        "checkpoint_every_s": checkpoint_every_s,
        "fail_at_epoch": fail_at_epoch, "train_rows": int(len(train[1])),
        "class_weights": None if class_weights is None else [float(w) for w in class_weights],
    }
    if where == "local":
        session = _LocalSession(Path(storage_path).resolve() / run_name, train, val)
        _in_process(cfg, session)
        with session.latest() as d:
            if d is None:
                raise RuntimeError(f"training {model} produced no checkpoint")
            state = json.loads(Path(d, "state.json").read_text())
            weights = load_file(str(Path(d, "best.safetensors")))
    else:
        state, weights = _fit_ray_train(cfg, train, val, storage_path=storage_path,
                                        run_name=run_name, num_workers=num_workers,
                                        use_gpu=use_gpu, cpus_per_worker=cpus_per_worker,
                                        callbacks=callbacks)
    return TorchFit(state_dict=weights, history=state["history"], best_epoch=state["best_epoch"],
                    hyperparameters=hp, trainer=where, wall_s=time.time() - t0,
                    loop_s=float(state.get("loop_s", 0.0)))


def _in_process(cfg: dict[str, Any], session: _LocalSession) -> None:
    """The loop in this process, leaving torch's global thread and determinism settings as
    they were."""
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        _loop(cfg, session)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


def _fit_ray_train(cfg: dict[str, Any], train, val, *, storage_path, run_name: str,
                   num_workers: int, use_gpu: bool, cpus_per_worker: float, callbacks):
    import ray.train
    from ray.train.torch import TorchTrainer
    from safetensors.torch import load_file

    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=cfg,
        scaling_config=ray.train.ScalingConfig(
            num_workers=num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cpus_per_worker, **({"GPU": 1} if use_gpu else {})}),
        run_config=ray.train.RunConfig(
            name=run_name, storage_path=str(Path(storage_path).resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks)),
        datasets={"train": to_ray_dataset(*train), "val": to_ray_dataset(*val)},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training {cfg['model']} produced no checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = json.loads(Path(d, "state.json").read_text())
        weights = load_file(str(Path(d, "best.safetensors")))
    return state, weights


def load_torch_model(model: str, options: dict[str, Any], input_shape: Sequence[int],
                     n_classes: int, state_dict: dict[str, Any]):
    from ser_ray.models import build_model, rebuild_options

    module = build_model(model, tuple(input_shape), n_classes, **rebuild_options(model, options))
    module.load_state_dict(state_dict)
    return module.eval()
