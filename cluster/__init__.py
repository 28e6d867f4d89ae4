"""Where trials run: a local Ray, a Ray cluster started with ``stune cluster``, or a GPU cluster.

Public API (importing this package does not import Ray)::

    from cluster import ClusterError                 # every user-facing error: one line, names the flag
    from cluster.connect import connect, disconnect, ConnectionInfo   # the sweep driver's Ray
    from cluster.storage import resolve_storage      # --storage -> RunConfig(storage_path=...)
    from cluster import storage                      # read/write/upload/download under a URI
    from cluster import local                        # start/join/stop/status behind `stune cluster`
    from cluster.cli import app                      # the typer sub-app mounted as `stune cluster`

This package knows where trials run, never what they do.
"""

from .errors import ClusterError

__all__ = ["ClusterError"]
