"""Personalisation math: which tensors stay on a client, Ditto's proximal step, and the
validation split a client chooses its personal model on.

The glue that runs these inside a simulation (and keeps personal tensors in the client's
own state) is :mod:`fedlm.capabilities.personal`.
"""

from fedlm.personal.ditto import prox_toward
from fedlm.personal.modules import personal_names, split_personal
from fedlm.personal.selection import best_index, split_validation

__all__ = ["best_index", "personal_names", "prox_toward", "split_personal", "split_validation"]
