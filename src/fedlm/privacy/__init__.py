"""Privacy: client-level DP, secure aggregation, and the audits of both.

Import from the modules (this package imports nothing eagerly, so the protocol needs no
torch): ``privacy.clipping``, ``privacy.noise``, ``privacy.accountant`` and
``privacy.calibrate`` (Gaussian DP-FedAvg), ``privacy.stages``; ``privacy.plan`` (the
public values a DP run fixes), ``privacy.ledgers`` (its accounting, round by round),
``privacy.sampling`` (secret cohorts), ``privacy.records`` (public and private round
records), ``privacy.disclosure`` (what epsilon covers); ``privacy.distributed`` (the
distributed discrete Gaussian and Skellam); ``privacy.secagg`` (SecAgg+);
``privacy.one_run_audit`` and ``privacy.canary_clients`` (the audited epsilon);
``privacy.canaries`` and ``privacy.audit`` (canary text exposure, membership inference).
"""
