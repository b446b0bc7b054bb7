"""Faults: the incident's hypotheses as injectable, revertible changes to a running lab.

Call `apply`, `revert`, `status` and `list_kinds` (lab.faults.engine); `teardown` runs before a lab is removed.
"""

from lab.faults.engine import apply, check, list_kinds, revert, status, teardown

__all__ = ["apply", "check", "list_kinds", "revert", "status", "teardown"]
