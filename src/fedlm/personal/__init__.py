"""Personalisation math: which tensors stay on a client, and Ditto's proximal step.

The glue that runs these inside a simulation (and keeps personal tensors in the client's
own state) is :mod:`fedlm.runtime.personal_run`.
"""

from fedlm.personal.ditto import prox_toward
from fedlm.personal.modules import personal_names, split_personal

__all__ = ["personal_names", "prox_toward", "split_personal"]
