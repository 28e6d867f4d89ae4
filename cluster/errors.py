"""The one exception type of ``cluster/``."""


class ClusterError(Exception):
    """A problem with where trials run (address, token, ports, storage URI).

    The message is one line meant for the user: it names the flag involved
    (``--address``, ``--storage``, ``--port``...) and the fix. The CLI prints it
    on stderr and exits with code 2, without a traceback.
    """
