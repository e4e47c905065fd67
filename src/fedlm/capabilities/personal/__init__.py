"""Personalisation: the capability and one class per method (see ``base.py``)."""

from fedlm.capabilities.personal.base import MIX_KEY, PERSONAL_KEY, PersonalMethod
from fedlm.capabilities.personal.capability import Personalization, heldout_sums, personal_report

__all__ = ["MIX_KEY", "PERSONAL_KEY", "PersonalMethod", "Personalization", "heldout_sums", "personal_report"]
