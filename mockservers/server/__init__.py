"""The composition root: builds identity and both service apps, serves them, owns the data dir.

Nothing inside ``mockservers`` imports this package; it imports the services.
"""

from .sandbox import Sandbox, SandboxConfig, freeze_startup_heap

__all__ = ["Sandbox", "SandboxConfig", "freeze_startup_heap"]
