"""The contract-testing kit: start the sandbox from your tests, live or in process, and verify what
your code sent.

    from mockservers.testing import sandbox

    with sandbox(mode="inprocess") as sb:          # no sockets: requests to its URLs are answered in process
        session = sb.session()                     # authenticated for the Dataverse Web API
        session.patch(f"{sb.api}/accounts(...)", json={...}, headers={"If-Match": "*"})
        sb.journal.assert_requests(1, "dataverse", method="PATCH", headers={"If-Match": "*"})

The pytest plugin (registered as ``bc_dataverse_sandbox``) offers the same as fixtures:
``sandbox_inprocess``, ``sandbox_inprocess_module``, ``sandbox_live`` and ``sandbox_factory``.
"""

from .control import ControlClient, ControlError
from .inprocess import DroppedConnection, RouterBusy, SandboxRouter
from .journal import JournalView, RecordedRequest
from .running import ClockControl, RunningSandbox, sandbox, start_sandbox

__all__ = [
    "ClockControl",
    "ControlClient",
    "ControlError",
    "DroppedConnection",
    "JournalView",
    "RecordedRequest",
    "RouterBusy",
    "RunningSandbox",
    "SandboxRouter",
    "sandbox",
    "start_sandbox",
]
