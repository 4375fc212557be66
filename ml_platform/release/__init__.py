"""Release logic (promote, ramp, roll back; audit record and alert) in one service.

Sits above `core` and `resources` and below `assets`, `automation`, `serving` and the CLI, which
all call it: `ReleaseService` moves aliases, `analyse` runs one canary analysis.
"""

from ml_platform.release.service import ReleaseRefused, ReleaseService, policy_for

__all__ = ["ReleaseRefused", "ReleaseService", "policy_for"]
