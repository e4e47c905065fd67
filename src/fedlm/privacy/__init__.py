"""Privacy: client-level DP and secure aggregation.

Import from the modules: ``privacy.clipping``, ``privacy.noise``, ``privacy.accountant``,
``privacy.stages`` and ``privacy.secagg`` (the protocol needs no torch, so this package
imports nothing eagerly).
"""
