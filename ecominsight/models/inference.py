"""Batch inference with the classifier at a chosen precision: the one scoring path that Spark's
predict UDF, the benchmarks and the GPU check all run.

Precisions: `fp32` (the reference), `int8` (dynamic int8 quantisation of the Linear layers),
`onnx` (ONNX Runtime on an export of encoder + head written once per model version into
`<model_dir>/onnx/model.onnx`), `bf16` (autocast on a CUDA GPU; refused on CPU).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ecominsight import storage
from ecominsight.config import ConfigError
from ecominsight.storage import StoragePath
from ecominsight.models.classifier import TextAndNumbersClassifier, encode_texts, load_classifier

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "onnx", "bf16")
ONNX_FILE = Path("onnx") / "model.onnx"
ONNX_OPSET = 17

Scorer = Callable[[Sequence[str], np.ndarray], np.ndarray]


class _Probability(nn.Module):
    """The classifier with its softmax, so that an export returns the positive-class probability."""

    def __init__(self, model: TextAndNumbersClassifier):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor,
                numeric: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            numeric=numeric)
        return torch.softmax(logits, dim=-1)[:, 1]


def check_precision(precision: str) -> None:
    """Raise ConfigError when `precision` is unknown or cannot run here (bf16 without a CUDA GPU)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"score.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and not torch.cuda.is_available():
        # bf16 autocast on a CPU without bf16 units is slower than fp32 and only loses accuracy.
        raise ConfigError("score.precision: bf16 scoring runs on a CUDA GPU only and no GPU is visible here; "
                          "use fp32, int8 or onnx on CPU")


def onnx_path(model_dir: str | Path) -> Path:
    """Where the ONNX export of a model in a local folder is (`load_scorer` reads it there)."""
    return Path(model_dir) / ONNX_FILE


def export_onnx(model_dir: str | os.PathLike[str] | StoragePath) -> StoragePath:
    """Export encoder + numeric head (+ softmax) of the model in `model_dir` (a folder on the lake, any
    store, or a local one) to ONNX, once per model version: an existing export is reused. Batch and
    sequence axes are dynamic. Returns where the export is."""
    folder = model_dir if isinstance(model_dir, StoragePath) else storage.resolve(model_dir)
    target = folder / ONNX_FILE.as_posix()
    if target.exists():
        return target
    with folder.local_copy() as local:
        model, tokenizer, scaler, _ = load_classifier(local)
    # Two texts of different lengths: the traced graph must see a padded batch, so that the attention
    # mask is built from the input rather than folded away as all-ones.
    example = tokenizer(["a short text", "a longer text with several more words in it"], padding=True,
                        return_tensors="pt")
    numeric = torch.zeros(2, len(scaler.names))
    token_type_ids = example.get("token_type_ids", torch.zeros_like(example["input_ids"]))
    sequence = {0: "batch", 1: "sequence"}
    # Exported on this machine, then written in one atomic replace (one PUT on an object store): a
    # concurrent or interrupted export never leaves a half-written model that a later run would load.
    with tempfile.TemporaryDirectory(prefix="ecominsight-onnx-") as scratch:
        exported = Path(scratch) / ONNX_FILE.name
        # The TorchScript exporter needs only the `onnx` package (the dynamo one also needs onnxscript).
        torch.onnx.export(
            _Probability(model).eval(), (example["input_ids"], example["attention_mask"], token_type_ids, numeric),
            str(exported), input_names=["input_ids", "attention_mask", "token_type_ids", "numeric"],
            output_names=["probability"],
            dynamic_axes={"input_ids": sequence, "attention_mask": sequence, "token_type_ids": sequence,
                          "numeric": {0: "batch"}, "probability": {0: "batch"}},
            opset_version=ONNX_OPSET, dynamo=False,
        )
        target.write_bytes(exported.read_bytes())
    log.info("exported %s to ONNX at %s", folder, target)
    return target


def load_scorer(model_dir: str | Path, *, precision: str = "fp32", threads: int = 1, device: str | None = None) -> Scorer:
    """A function (texts, raw numeric features [n, k]) -> positive-class probabilities (float64, n),
    from the model in the local folder `model_dir` (a lake's: StoragePath.local_copy).

    `threads` is the intra-op thread count (torch or ONNX Runtime); `device` defaults to cuda for
    bf16 and cpu otherwise. For `onnx` the export must exist (`export_onnx`, run on the driver)."""
    check_precision(precision)
    device = device or ("cuda" if precision == "bf16" else "cpu")
    torch.set_num_threads(threads)
    model, tokenizer, scaler, max_length = load_classifier(model_dir)

    def encode(texts: Sequence[str], numeric: np.ndarray) -> dict[str, np.ndarray]:
        encoded = tokenizer.pad(encode_texts(tokenizer, texts, max_length=max_length), return_tensors="np")
        values = np.asarray(numeric, dtype=np.float64).reshape(len(texts), -1)[:, : len(scaler.names)]
        return {**encoded, "numeric": scaler.transform(values)}

    if precision == "onnx":
        import onnxruntime as ort

        path = onnx_path(model_dir)
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX export at {path}: run ecominsight.models.inference.export_onnx first")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def score_onnx(texts: Sequence[str], numeric: np.ndarray) -> np.ndarray:
            inputs = encode(texts, numeric)
            inputs.setdefault("token_type_ids", np.zeros_like(inputs["input_ids"]))
            feed = {name: inputs[name].astype(np.float32 if name == "numeric" else np.int64) for name in names}
            return session.run(None, feed)[0].astype(np.float64)

        return score_onnx

    module = _Probability(model).eval()
    if precision == "int8":
        module = torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
    module = module.to(device)

    def score_torch(texts: Sequence[str], numeric: np.ndarray) -> np.ndarray:
        inputs = {k: torch.from_numpy(v).to(device) for k, v in encode(texts, numeric).items()}
        inputs.setdefault("token_type_ids", torch.zeros_like(inputs["input_ids"]))
        with torch.inference_mode(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16,
                                                    enabled=precision == "bf16"):
            return module(**inputs).float().cpu().double().numpy()

    return score_torch
