"""Ray token authentication: where the token lives, creating it, passing it on.

Ray 2.60 reads the token from ``RAY_AUTH_TOKEN`` (the token itself), else the file
named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. A head started with
``RAY_AUTH_MODE=token`` rejects every node and driver that does not present it;
a client only sends it when its own ``RAY_AUTH_MODE`` is ``token``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

AUTH_MODE_VAR = "RAY_AUTH_MODE"
TOKEN_VAR = "RAY_AUTH_TOKEN"
TOKEN_PATH_VAR = "RAY_AUTH_TOKEN_PATH"


def token_path() -> Path:
    """The token file Ray uses on this machine (``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``)."""
    env = os.environ.get(TOKEN_PATH_VAR)
    return Path(env).expanduser() if env else Path.home() / ".ray" / "auth_token"


def token_available() -> bool:
    """True when this process would have a token to present (env var or non-empty file)."""
    if os.environ.get(TOKEN_VAR, "").strip():
        return True
    p = token_path()
    try:
        return p.is_file() and p.read_text().strip() != ""
    except OSError:
        return False


def ensure_token() -> tuple[Path, bool]:
    """Create the token file (0600, 256 random bits, as ``ray get-auth-token --generate``) if missing.

    Returns ``(path, created)``. If ``RAY_AUTH_TOKEN`` is set, that token wins
    over any file, and nothing is written.
    """
    p = token_path()
    if os.environ.get(TOKEN_VAR, "").strip() or token_available():
        return p, False
    p.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return p, True


def auth_disabled_explicitly() -> bool:
    """The user set ``RAY_AUTH_MODE`` to something other than ``token`` (e.g. ``disabled``)."""
    mode = os.environ.get(AUTH_MODE_VAR)
    return mode is not None and mode.strip().lower() != "token"


def client_auth_env(
    token: str | None = None, token_file: str | os.PathLike | None = None
) -> dict[str, str | None]:
    """Environment changes for a process that connects to a cluster (``None`` = unset).

    The token is sent when there is one: an explicit ``token`` or ``token_file``
    overrides what the environment holds. Without any token, ``RAY_AUTH_MODE``
    is left alone (a head with auth then refuses, which callers turn into a
    clear error).
    """
    env: dict[str, str | None] = {}
    if token is not None:
        env[TOKEN_VAR] = token
    elif token_file is not None:
        env[TOKEN_VAR] = None
        env[TOKEN_PATH_VAR] = str(Path(token_file).expanduser().resolve())
    have = token is not None or token_file is not None or token_available()
    if have and os.environ.get(AUTH_MODE_VAR) is None:
        env[AUTH_MODE_VAR] = "token"
    return env


def merged_env(changes: dict[str, str | None], base: dict[str, str] | None = None) -> dict[str, str]:
    """``base`` (default ``os.environ``) with ``changes`` applied; ``None`` removes a variable."""
    env = dict(os.environ if base is None else base)
    for k, v in changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env
