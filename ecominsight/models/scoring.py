"""Score users with the fine-tuned transformer inside Spark, through `predict_batch_udf`."""

from __future__ import annotations

from pyspark.ml.functions import predict_batch_udf
from pyspark.sql import Column
from pyspark.sql.types import DoubleType


def transformer_probability_udf(model_dir: str, *, max_length: int, batch_size: int, torch_threads: int = 1):
    """A pandas UDF: text column -> positive-class probability. The model and tokenizer are loaded
    once per Python worker (predict_batch_udf caches what `make_predict_fn` returns)."""

    def make_predict_fn():
        import os

        os.environ["HF_HUB_OFFLINE"] = "1"
        import numpy as np
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        # One thread per Python worker: Spark already runs one worker per core.
        torch.set_num_threads(torch_threads)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()

        def predict(texts: np.ndarray) -> np.ndarray:
            encoded = tokenizer([str(t) for t in texts], truncation=True, max_length=max_length,
                                padding=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**encoded).logits
            return torch.softmax(logits, dim=-1)[:, 1].double().numpy()

        return predict

    return predict_batch_udf(make_predict_fn, return_type=DoubleType(), batch_size=batch_size)


def transformer_probability(text: Column, model_dir: str, *, max_length: int, batch_size: int,
                            torch_threads: int = 1) -> Column:
    """Column expression: the transformer's purchase probability for each row's text."""
    return transformer_probability_udf(model_dir, max_length=max_length, batch_size=batch_size,
                                       torch_threads=torch_threads)(text)
