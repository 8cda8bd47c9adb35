"""Connect the driver to Ray: the configured cluster (``ray.address``, ``$RAY_ADDRESS``, a Ray
job's own cluster) or a local runtime on 127.0.0.1; one ``ServiceError`` line when the cluster
refuses the driver's authentication token.

Token authentication (Ray 2.60, ``ray/_private/authentication/authentication_token_setup.py``):
a process is in token mode when ``RAY_AUTH_MODE=token``, and it takes the token from
``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``. Left
unset, the mode differs between processes: ``ray start --head`` turns token mode on whenever
``~/.ray/auth_token`` exists (which any earlier local ``ray.init()`` writes), ``ray start
--address`` and ``ray.init(address=HOST:PORT)`` never do - so set ``RAY_AUTH_MODE=token`` for
every node and every driver, and give them all the head's token.
"""

from __future__ import annotations

import os
from pathlib import Path

from odyssey.errors import ServiceError

__all__ = ["auth_headers", "connect", "loopback_if_local", "secure_token_file", "starts_local_runtime", "token_error"]

_SHARE = (
    "use the head's token (`ray get-auth-token` on the head prints it) as RAY_AUTH_TOKEN, "
    "in a file named by RAY_AUTH_TOKEN_PATH or in ~/.ray/auth_token, with RAY_AUTH_MODE=token, "
    "on every node and every machine that connects"
)


def connect(address: str | None, *, runtime_env: dict | None = None) -> bool:
    """``ray.init`` for a sweep's driver unless Ray is already initialised; True when it connected
    (the caller then calls ``ray.shutdown()``). ``address`` None or "local" with no
    ``$RAY_ADDRESS``: a local runtime on 127.0.0.1 (Ray's dashboard and job server bind to
    127.0.0.1 by default too)."""
    import ray

    if ray.is_initialized():
        return False
    local = starts_local_runtime(address)
    target = None if local else (address or os.environ.get("RAY_ADDRESS"))
    secure_token_file(create=local)
    if target is not None:
        _check_token(target)
    from odyssey.sweep.interrupts import keep_handlers_through_ray_init

    extra = {"_node_ip_address": "127.0.0.1"} if local else {}
    try:
        # Trials' own output stays in the Ray logs; the driver prints the progress view only.
        with keep_handlers_through_ray_init():  # Ctrl-C and SIGTERM still stop the sweep cleanly
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False, **extra)
    except Exception as exc:
        if target is not None and _is_auth_failure(exc):
            raise ServiceError(token_error(target)) from None
        raise
    return True


def starts_local_runtime(address: str | None) -> bool:
    """Whether a driver given ``ray.address`` = ``address`` starts a Ray runtime on this machine:
    no address here, none in ``$RAY_ADDRESS``, and not the driver of a Ray job (whose cluster it is)."""
    return (
        address in (None, "local")
        and not os.environ.get("RAY_ADDRESS")
        and not os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    )


def loopback_if_local(address: str | None) -> None:
    """Keep Ray on 127.0.0.1 where it is meant to be there. Must run before Ray is imported:
    ``run_sweep`` calls it first, for ``odyssey sweep`` and ``od.study(...).run()`` alike (measured
    in a notebook without it: the local runtime's driver waited for a GCS on the outward address).

    On Linux Ray turns 127.0.0.1 (and localhost) into the machine's outward address, in
    ``ray.init``'s address and its node IP alike (``ray/_private/services.py``:
    ``resolve_ip_for_localhost``), unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``. So that switch
    is set for a runtime this command starts itself (no ``ray.address``, no ``$RAY_ADDRESS``), and
    for a configured loopback address (``127.0.0.1:PORT``) whose head listens on loopback only
    (``ray start --head --node-ip-address 127.0.0.1`` under that switch): the outward address
    would not reach it. A head that also listens on the outward address, an explicit setting of
    the switch, and the driver of a Ray job (it inherits the head's environment) are left alone."""
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address in (None, "local") or _loopback_only(address):
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _loopback_only(address: str) -> bool:
    """Whether ``address`` is ``127.0.0.1:PORT`` / ``localhost:PORT`` / ``[::1]:PORT`` and nothing
    answers at PORT on the machine's outward address (where Ray would otherwise send it)."""
    import socket
    from urllib.parse import urlparse

    if "://" in address:
        return False
    try:
        parsed = urlparse(f"ray://{address}")
        host, port = parsed.hostname, parsed.port
    except ValueError:
        return False
    if host not in ("127.0.0.1", "localhost", "::1") or not port:
        return False
    try:  # the address Ray would pick: the source address of a route to the internet (no packet sent)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.connect(("8.8.8.8", 53))
            outward = udp.getsockname()[0]
    except OSError:
        return True
    if outward.startswith("127."):
        return True
    try:
        with socket.create_connection((outward, port), timeout=2):
            return False  # the head listens there too: Ray's own rewrite reaches it
    except OSError:
        return True


def secure_token_file(*, create: bool = False) -> Path | None:
    """Keep the Ray token file private: it opens every job server that trusts it.

    ``create``: for a local runtime that Ray would give a new token (Ray 2.60 turns token mode on
    for a new local cluster and writes ``~/.ray/auth_token`` with the default umask, 0644 in a
    0755 folder), write it first ourselves, 0600 in a 0700 folder (Ray then uses it). A token
    file that exists with group or other permissions gets one warning naming it and the
    ``chmod`` that fixes it. Returns the token file in use, if any."""
    import secrets
    import stat
    import sys

    if os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if create and not path.exists() and not os.environ.get("RAY_AUTH_TOKEN_PATH"):
        folder = path.parent
        if not folder.exists():
            folder.mkdir(mode=0o700, parents=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another driver wrote it meanwhile
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))  # Ray's own token format: 256 random bits, hex
    if not path.is_file():
        return None
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 and str(path) not in _WARNED:
        _WARNED.add(str(path))
        print(
            f"warning: the Ray token file {path} is readable by others (mode {mode:04o}); anyone who reads it can "
            f"run code on the cluster: chmod 600 {path}",
            file=sys.stderr,
            flush=True,
        )
    return path


_WARNED: set[str] = set()


def token_error(address: str) -> str:
    """The one line for a cluster at ``address`` that refused this process's token (or its lack)."""
    from ray._raylet import AuthenticationMode, get_authentication_mode

    if get_authentication_mode() != AuthenticationMode.TOKEN:
        found = "RAY_AUTH_MODE is not 'token' here, so no token is sent"
    elif os.environ.get("RAY_AUTH_TOKEN"):
        found = "the token sent is $RAY_AUTH_TOKEN"
    elif os.environ.get("RAY_AUTH_TOKEN_PATH"):
        found = f"the token sent is the file {os.environ['RAY_AUTH_TOKEN_PATH']} ($RAY_AUTH_TOKEN_PATH)"
    else:
        found = "the token sent is ~/.ray/auth_token"
    return f"Ray cluster at {address} refused this process's authentication token ({found}): {_SHARE}"


def auth_headers() -> dict[str, str]:
    """The ``Authorization`` header for Ray's HTTP endpoints (dashboard, job server) when this
    process is in token mode; ``{}`` otherwise."""
    from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled

    return dict(get_auth_headers_if_auth_enabled({}))


def _check_token(address: str) -> None:
    """Fail in a second, before ``ray.init`` (which retries a refused token for ~20 s and then
    raises a chained ConnectionError), when the GCS at ``address`` refuses this process's token.
    Anything else (no GCS there, a client address) is left to ``ray.init``."""
    if "://" in address or address == "auto":
        return
    from ray.exceptions import AuthenticationError

    try:
        from ray._private.authentication.authentication_token_setup import ensure_token_if_auth_enabled
        from ray._private.services import canonicalize_bootstrap_address
        from ray._raylet import InnerGcsClient
    except ImportError:  # another Ray: ray.init's own errors, translated in connect()
        return
    try:
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
    except AuthenticationError:  # RAY_AUTH_MODE=token but no token anywhere
        raise ServiceError(
            f"Ray cluster at {address}: RAY_AUTH_MODE=token but this process has no token (no $RAY_AUTH_TOKEN, "
            f"$RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token): {_SHARE}"
        ) from None
    try:
        gcs = canonicalize_bootstrap_address(address) or address  # as ray.init will (127.0.0.1 rewrites)
        InnerGcsClient.standalone(gcs, None, 5000)
    except AuthenticationError:
        raise ServiceError(token_error(address)) from None
    except Exception:  # noqa: BLE001 - not ours to judge: ray.init reports it
        return


def _is_auth_failure(exc: BaseException) -> bool:
    """Whether ``exc`` or what it was raised from is Ray refusing a token (ray.init wraps the
    AuthenticationError into RuntimeError and ConnectionError, with the traceback as text)."""
    from ray.exceptions import AuthenticationError

    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, AuthenticationError) or "InvalidAuthToken" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
