"""Faults: the incident's hypotheses as injectable, revertible changes to a running lab.

Call `apply`, `revert`, `status` and `kinds` (lab.faults.engine); `teardown` runs before a lab is removed.
"""

from lab.faults.engine import apply, check, kinds, revert, status, teardown

__all__ = ["apply", "check", "kinds", "revert", "status", "teardown"]
