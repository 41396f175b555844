"""The prepared GPU check (issue 19, item 5): in one go on a machine with a CUDA GPU, the GPU's bf16
matrix-multiply ceiling, one training epoch of the train stage's own rank code (`train_worker`,
DistributedDataParallel) under torchrun with nccl, and bf16 scoring of the epoch's model through the
scorer the Spark UDF runs (`load_scorer`), each as a fraction of that ceiling. Writes
benchmarks/results/gpu.json.

The GPU machine lent here has PyTorch, transformers and pyarrow but neither Spark nor Java, and takes
at most 64 MiB of files along, so the check runs in two steps:

    # here, with the lake of a run (Spark not needed for this step either): what must travel, ~10 MB
    .venv/bin/python benchmarks/gpu.py prepare --lake LAKE --out .gpu
    # there (`.gpu` carried): pyspark's Python modules without the jars (pyspark-client, built here
    # from its sdist) and py4j, which ecominsight's imports need; then the check
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/wheels/*.whl && \\
        PYTHONPATH=/tmp/site:. python3 benchmarks/gpu.py run --prepared .gpu --out $OUT/gpu.json

`prepare` copies the lake's fused training table (features/user_sequences, its current version) and
the encoder's configuration and tokenizer, not its weights: the GPU's speed depends on the shapes
alone, so `run` starts from a seeded random initialisation of the same architecture (MiniLM-L6's
weights, 87 MB, would not fit). `run --device cpu` takes the same path with gloo and fp32, as
tests/test_gpu_script.py runs it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(HERE))
from scoring import encoder_flops  # noqa: E402  (the FLOP count the CPU benchmark uses)

from ecominsight.logs import setup_logging  # noqa: E402

RESULTS = HERE / "results" / "gpu.json"
TABLE_FOLDER = "user_sequences"
ENCODER_FOLDER = "encoder"
WHEELS_FOLDER = "wheels"
# pyspark's Python side without its 400 MB of jars (only an sdist on PyPI; built into a wheel here),
# and the py4j that pyspark 4.3 pins.
CARRIED_PACKAGES = ("pyspark-client==4.2.0", "py4j==0.10.9.9")
CARRY_LIMIT_BYTES = 60 << 20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".onnx", ".h5", ".msgpack")
log = logging.getLogger("benchmarks.gpu")


def _synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_tflops(device: str, dtype, *, size: int, repeats: int) -> float:
    """Sustained matrix-multiply rate (TFLOP/s) of `device` in `dtype`: the practical ceiling."""
    import torch

    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    _synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.mm(a, b)
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _copy_current_version(table_root: Path, target: Path) -> None:
    """The table's manifest and the version folders it names: what `table_dataset` reads."""
    from ecominsight.io import MANIFEST

    manifest = json.loads((table_root / MANIFEST).read_text())
    versions = set(manifest["partitions"].values()) if manifest.get("partition_by") else {manifest["version"]}
    target.mkdir(parents=True)
    shutil.copy2(table_root / MANIFEST, target / MANIFEST)
    for version in sorted(versions):
        shutil.copytree(table_root / version, target / version)


def _build_wheels(target: Path) -> None:
    """CARRIED_PACKAGES as wheels in `target`, from the package index (an sdist is built here)."""
    target.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as downloads:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", downloads,
                        *CARRIED_PACKAGES], check=True, timeout=600)
        for archive in sorted(Path(downloads).iterdir()):
            if archive.suffix == ".whl":
                shutil.copy2(archive, target / archive.name)
            else:
                subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(target), str(archive)],
                               check=True, timeout=600)


def prepare(lake: Path, out: Path, *, encoder: str, wheels: bool) -> dict:
    """`out`: the fused training table of `lake`, the encoder's config and tokenizer, the wheels;
    PREPARED.json describing them. Refuses a folder over the carry limit."""
    import pyarrow.dataset as ds

    from ecominsight.catalog import USER_SEQUENCES
    from ecominsight.io import table_dataset
    from ecominsight.models.transformer import resolve_pretrained

    if out.exists():
        raise SystemExit(f"{out} exists: give a new folder")
    table_root = lake / USER_SEQUENCES.zone / USER_SEQUENCES.name
    _copy_current_version(table_root, out / TABLE_FOLDER)
    encoder_dir = Path(resolve_pretrained(encoder))
    (out / ENCODER_FOLDER).mkdir()
    for path in encoder_dir.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, out / ENCODER_FOLDER / path.name)
    if wheels:
        _build_wheels(out / WHEELS_FOLDER)
    table = table_dataset(str(out / TABLE_FOLDER))
    described = {"lake": str(lake.resolve()), "encoder": encoder, "table_rows": table.count_rows(),
                 "train_users": table.count_rows(filter=ds.field("split") == "train"), "bytes": _folder_bytes(out)}
    if described["bytes"] > CARRY_LIMIT_BYTES:
        raise SystemExit(f"{out} holds {described['bytes'] >> 20} MiB, over the {CARRY_LIMIT_BYTES >> 20} MiB that "
                         "can travel: prepare from a smaller lake")
    (out / "PREPARED.json").write_text(json.dumps(described, indent=2))
    log.info("prepared %s: %s", out, described)
    return described


def random_encoder(prepared_encoder: Path, target: Path, *, seed: int) -> str:
    """The architecture of the prepared encoder's config, seeded random weights, saved as safetensors
    with its tokenizer: a `pretrained` folder for `train_worker`."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    torch.manual_seed(seed)
    AutoModel.from_config(AutoConfig.from_pretrained(prepared_encoder)).save_pretrained(target, safe_serialization=True)
    AutoTokenizer.from_pretrained(prepared_encoder).save_pretrained(target)
    return str(target)


def _token_counts(tokenizer, texts: list[str], max_length: int) -> np.ndarray:
    """Each text's tokens after truncation to the token budget (no padding)."""
    return np.array([len(ids) for ids in tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]])


def _forward_flops(config, lengths: np.ndarray) -> float:
    return float(sum(encoder_flops(config, int(n)) for n in lengths))


def train_one_epoch(prepared: Path, scratch: Path, *, device: str, processes: int, batch_size: int) -> dict:
    """One epoch of `train_worker` on the prepared table under torchrun (nccl on cuda, gloo on cpu):
    its timings and its model folder."""
    from ecominsight.config import load_config
    from ecominsight.models.transformer import transformer_spec

    encoder = random_encoder(prepared / ENCODER_FOLDER, scratch / "encoder", seed=0)
    settings = load_config("local", [f"lake={scratch / 'lake'}"]).train.transformer
    settings = dataclasses.replace(settings, pretrained=encoder, epochs=1, batch_size=batch_size, use_gpu=device == "cuda")
    spec = transformer_spec(settings, data_path=str(prepared / TABLE_FOLDER), output_dir=str(scratch / "model"),
                            extra_tokens=[])
    spec_file = scratch / "spec.json"
    spec_file.write_text(json.dumps(dataclasses.asdict(spec)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                    str(Path(__file__).resolve()), "rank", str(spec_file)], check=True, env=env, timeout=1800)
    wall = time.perf_counter() - started
    metrics = json.loads((scratch / "model" / "metrics.json").read_text())
    return {"spec": spec, "model_dir": str(scratch / "model"), "wall_seconds": wall, "metrics": metrics}


def run_rank(spec_file: str) -> None:
    """One torchrun rank: `train_worker` on the spec written by `train_one_epoch`."""
    from ecominsight.models.transformer import TrainSpec, train_worker

    values = json.loads(Path(spec_file).read_text())
    values.update(extra_tokens=tuple(values["extra_tokens"]), numeric_features=tuple(values["numeric_features"]))
    train_worker(TrainSpec(**values))


def run(prepared: Path, out: Path, *, device: str, processes: int | None, train_batch_size: int, users: int,
        batch_size: int) -> dict:
    """The three measurements on the prepared folder -> results (also written to `out`)."""
    import pyarrow.dataset as ds
    import torch

    from ecominsight.io import table_dataset
    from ecominsight.models.classifier import load_classifier
    from ecominsight.models.inference import load_scorer

    on_gpu = device == "cuda"
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU is visible: run with --device cpu to check the same path in fp32 with gloo")
    processes = processes or (torch.cuda.device_count() if on_gpu else 2)
    precision, dtype = ("bf16", torch.bfloat16) if on_gpu else ("fp32", torch.float32)
    ceiling = gemm_tflops(device, dtype, size=8192 if on_gpu else 1024, repeats=50 if on_gpu else 10)
    log.info("%s GEMM ceiling: %.1f TFLOP/s", precision, ceiling)

    with tempfile.TemporaryDirectory(prefix="ecominsight-gpu-") as scratch_name:
        scratch = Path(scratch_name)
        trained = train_one_epoch(prepared, scratch, device=device, processes=processes, batch_size=train_batch_size)
        spec, metrics = trained["spec"], trained["metrics"]
        model, tokenizer, scaler, max_length = load_classifier(trained["model_dir"])
        frame = table_dataset(str(prepared / TABLE_FOLDER)).to_table(
            columns=["text", "split", *scaler.names]).to_pandas()
        # What the epoch computed: forward and backward (about 3x the forward FLOPs) on every train
        # user, then a forward pass over the validation split; token counts without padding.
        epoch = metrics["history"][0]
        train_lengths = _token_counts(tokenizer, frame.loc[frame["split"] == "train", "text"].tolist(), max_length)
        valid_lengths = _token_counts(tokenizer, frame.loc[frame["split"] == "valid", "text"].tolist(), max_length)
        epoch_flops = 3 * _forward_flops(model.encoder.config, train_lengths) + _forward_flops(model.encoder.config, valid_lengths)
        training = {
            "backend": "nccl" if on_gpu else "gloo", "autocast": "bf16" if on_gpu and torch.cuda.is_bf16_supported() else None,
            "world_size": metrics["world_size"], "train_users": metrics["n_train"], "valid_users": len(valid_lengths),
            "batch_size_per_rank": spec.batch_size, "max_length": spec.max_length,
            "epoch_seconds": epoch["seconds"], "torchrun_wall_seconds": trained["wall_seconds"],
            "train_users_per_s": metrics["n_train"] / epoch["seconds"],
            "useful_tflops": epoch_flops / epoch["seconds"] / 1e12,
            "flop_fraction": epoch_flops / epoch["seconds"] / 1e12 / ceiling,
        }
        log.info("training: %s", training)

        # Scoring: the fused table's texts (every split), repeated up to `users`, in length-sorted
        # batches through the UDF's scorer; tokenising timed apart, as on a GPU it can be the limit.
        repeats = -(-users // len(frame))
        texts = (frame["text"].tolist() * repeats)[:users]
        numeric = np.tile(frame[scaler.names].to_numpy(dtype="float64"), (repeats, 1))[:users]
        scorer = load_scorer(trained["model_dir"], precision=precision, threads=torch.get_num_threads(), device=device)
        order = np.argsort([len(t) for t in texts], kind="stable")
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        started = time.perf_counter()
        padded = [tokenizer([texts[i] for i in b], truncation=True, max_length=max_length, padding=True,
                            return_tensors="np")["input_ids"].shape for b in batches]
        tokenize_seconds = time.perf_counter() - started
        scorer([texts[i] for i in batches[-1]], numeric[batches[-1]])  # warm-up: kernels, allocator
        _synchronize(device)
        started = time.perf_counter()
        probabilities = np.concatenate([scorer([texts[i] for i in b], numeric[b]) for b in batches])
        _synchronize(device)
        seconds = time.perf_counter() - started
        scoring_flops = sum(rows * encoder_flops(model.encoder.config, width) for rows, width in padded)
        scoring = {
            "precision": precision, "users": users, "distinct_users": len(frame), "batch_size": batch_size,
            "mean_padded_tokens": sum(rows * width for rows, width in padded) / users,
            "seconds": seconds, "tokenize_seconds": tokenize_seconds, "users_per_s": users / seconds,
            "achieved_tflops": scoring_flops / seconds / 1e12, "flop_fraction": scoring_flops / seconds / 1e12 / ceiling,
            "probability_range": [float(probabilities.min()), float(probabilities.max())],
        }
        log.info("scoring: %s", scoring)

    results = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu", "torch": torch.__version__,
        f"gemm_tflops_{precision}": ceiling, "weights": "seeded random initialisation of the prepared encoder's architecture",
        "prepared": json.loads((prepared / "PREPARED.json").read_text()), "training": training, "scoring": scoring,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True))
    return results


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("prepare", help="here: the folder to carry to the GPU machine")
    made.add_argument("--lake", required=True, type=Path, help="a local lake with features/user_sequences")
    made.add_argument("--out", required=True, type=Path)
    made.add_argument("--encoder", default="minilm", help="train.transformer.pretrained: minilm or a model folder")
    made.add_argument("--no-wheels", dest="wheels", action="store_false", help="leave out the wheels (a machine with pyspark)")
    checked = commands.add_parser("run", help="there: the measurements")
    checked.add_argument("--prepared", required=True, type=Path)
    checked.add_argument("--out", type=Path, default=RESULTS)
    checked.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    checked.add_argument("--processes", type=int, help="training ranks (default: one per GPU; 2 on cpu)")
    checked.add_argument("--train-batch-size", type=int, default=64, help="per rank")
    checked.add_argument("--users", type=int, default=16384, help="users scored (the table's, repeated)")
    checked.add_argument("--batch-size", type=int, default=256, help="scoring batch")
    rank = commands.add_parser("rank", help="internal: one torchrun rank")
    rank.add_argument("spec_file")
    args = parser.parse_args(argv)
    if args.command == "rank":
        run_rank(args.spec_file)
        return None
    setup_logging()
    if args.command == "prepare":
        return prepare(args.lake, args.out, encoder=args.encoder, wheels=args.wheels)
    results = run(args.prepared, args.out, device=args.device, processes=args.processes,
                  train_batch_size=args.train_batch_size, users=args.users, batch_size=args.batch_size)
    log.info("%s", json.dumps(results, indent=2, sort_keys=True))
    return results


if __name__ == "__main__":
    main()
