"""ecominsight: e-commerce behaviour -> purchase propensity and user insight, on Spark."""

__version__ = "0.1.0"
