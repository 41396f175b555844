"""The purchase classifier: a pretrained encoder over the user text, plus the numeric features.

logits = W · [mean-pooled encoder output ; standardised log1p(numeric features)] + b

The numeric part makes logistic regression a special case of the model, so fine-tuning starts
from what the baseline already knows and the text has to add to it. Saved as the encoder in
Hugging Face format (safetensors), `head.safetensors`, and `classifier.json` (feature names and
the train-split scaling), next to the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer

from ecominsight.models import META_FILE  # noqa: F401  (defined without torch, re-exported here)
from ecominsight.schema import ATTRIBUTE_SEPARATOR

HEAD_FILE = "head.safetensors"


class TextAndNumbersClassifier(nn.Module):
    """Encoder + linear head over [pooled text ; numeric features] -> 2 logits."""

    def __init__(self, encoder: nn.Module, n_numeric: int, dropout: float = 0.1):
        super().__init__()
        # The head pools the token states itself; an unused pooler would stall DDP's gradient sync.
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size + n_numeric, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, numeric: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state
        # Mean pooling, as the sentence-transformers MiniLM was trained with.
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(torch.cat([self.dropout(pooled), numeric.to(hidden.dtype)], dim=-1))


def encode_texts(tokenizer: Any, texts: Sequence[str], *, max_length: int) -> list[dict[str, list[int]]]:
    """Token ids of fused user texts (`attributes [SEP] behaviour`, as fuse writes them), each at most
    `max_length` long. The attributes are kept and the behaviour loses its oldest tokens, so both the
    user's attributes and the most recent events survive the budget (plain left truncation would cut
    the attributes first). A text that fits encodes exactly as `tokenizer(text)` does.
    Output: one unpadded {input_ids, token_type_ids, attention_mask} per text (for `tokenizer.pad`)."""
    split = [str(text).partition(ATTRIBUTE_SEPARATOR) for text in texts]
    budget = max_length - 2  # room for [CLS] and the final [SEP]
    heads = tokenizer([head if separator else "" for head, separator, _ in split], add_special_tokens=False)["input_ids"]
    side, tokenizer.truncation_side = tokenizer.truncation_side, "left"
    try:
        # Cut here already (oldest tokens first), so that no over-long sequence is ever built or warned about.
        tails = tokenizer([tail if separator else head for head, separator, tail in split], add_special_tokens=False,
                          truncation=True, max_length=budget)["input_ids"]
    finally:
        tokenizer.truncation_side = side
    encoded = []
    for head, tail in zip(heads, tails):
        # Attributes longer than the whole budget (never seen in practice) keep their beginning.
        head = [*head[: budget - 1], tokenizer.sep_token_id] if head else []
        keep = budget - len(head)
        ids = [tokenizer.cls_token_id, *head, *(tail[max(len(tail) - keep, 0):] if keep > 0 else []), tokenizer.sep_token_id]
        encoded.append({"input_ids": ids, "token_type_ids": [0] * len(ids), "attention_mask": [1] * len(ids)})
    return encoded


def freeze_lower_layers(encoder: nn.Module, n_layers: int) -> None:
    """Stop gradients into the encoder's input embeddings and its lowest `n_layers` transformer
    layers (BERT-family layout: `encoder.encoder.layer`). On small data this keeps the pretrained
    lower layers from drifting and makes each step cheaper; 0 leaves everything trainable."""
    if n_layers <= 0:
        return
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"freeze_layers: {type(encoder).__name__} has no encoder.layer stack to freeze")
    if n_layers > len(layers):
        raise ValueError(f"freeze_layers: {n_layers} asked, the encoder has {len(layers)} layers")
    for module in (encoder.get_input_embeddings(), getattr(encoder, "embeddings", None), *layers[:n_layers]):
        if module is not None:
            module.requires_grad_(False)


class NumericScaler:
    """log1p then standardise with train-split statistics (the baseline's transform)."""

    def __init__(self, names: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        self.names, self.mean, self.std = list(names), np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, names: Sequence[str], values: np.ndarray) -> "NumericScaler":
        logged = np.log1p(np.clip(np.asarray(values, dtype=np.float64), 0, None)).reshape(len(values), len(names))
        std = logged.std(axis=0) if len(names) else np.zeros(0)
        return cls(names, logged.mean(axis=0) if len(names) else [], np.where(std > 0, std, 1.0))

    def transform(self, values: np.ndarray) -> np.ndarray:
        logged = np.log1p(np.clip(np.asarray(values, dtype=np.float64), 0, None)).reshape(len(values), len(self.names))
        return ((logged - self.mean) / self.std).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"names": self.names, "mean": self.mean.tolist(), "std": self.std.tolist()}


def save_classifier(model: TextAndNumbersClassifier, tokenizer: Any, scaler: NumericScaler, directory: Path,
                    *, max_length: int) -> None:
    """Write encoder (safetensors), head, tokenizer and scaling into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    model.encoder.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(directory / HEAD_FILE))
    (directory / META_FILE).write_text(json.dumps({"numeric": scaler.to_json(), "max_length": max_length}, indent=2))


def _without_pooler(directory: Path) -> dict[str, bool]:
    """`add_pooling_layer=False` where the encoder's class takes it (BERT, RoBERTa, XLM-R...): the saved
    encoder has no pooler (the classifier mean-pools and drops it), and building one would only be
    reported as missing weights at every load. Classes without a pooler get no argument."""
    import inspect

    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    config = AutoConfig.from_pretrained(directory)
    model_class = MODEL_MAPPING.get(type(config), None)
    takes_it = model_class is not None and "add_pooling_layer" in inspect.signature(model_class.__init__).parameters
    return {"add_pooling_layer": False} if takes_it else {}


def load_classifier(directory: str | Path) -> tuple[TextAndNumbersClassifier, Any, NumericScaler, int]:
    """Load what `save_classifier` wrote, safetensors only. Returns (model in eval mode, tokenizer, scaler, max_length)."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    scaler = NumericScaler(**meta["numeric"])
    encoder = AutoModel.from_pretrained(directory, use_safetensors=True, **_without_pooler(directory))
    model = TextAndNumbersClassifier(encoder, len(scaler.names))
    model.head.load_state_dict(load_file(str(directory / HEAD_FILE)))
    return model.eval(), AutoTokenizer.from_pretrained(directory), scaler, int(meta["max_length"])
