"""The client side: local training (data never leaves this package's loop)."""

from fedlm.client.trainer import LocalResult, batches, steps_for, train_local

__all__ = ["LocalResult", "batches", "steps_for", "train_local"]
