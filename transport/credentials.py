"""One party's NATS credentials, as a process is given them: its seed file and the CA file.

Every role's process (node daemon, quorum member, cosigner, orchestrator) connects through
:func:`party_options`, which needs only the party's own ``.nk`` seed file (and, when the servers
require TLS, the bundle's ``tls/ca.pem``), never the whole bundle. The inbox prefix follows from
the role and id, ``_INBOX.<role>.<id>``, which is what the party's permissions let it subscribe
to (see :mod:`ops.natsauth.permissions`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nats
import nkeys
import structlog
from nats.aio.client import Client as NATS

from messages import subjects
from messages.errors import BadSubject, HsmfleetError
from transport.parties import ROLES, Party

log = structlog.get_logger("hsmfleet.nats")


class CredentialsError(HsmfleetError):
    """A party's NATS seed or CA file is missing, unreadable, or not what it should be."""

    kind = "nats_credentials"


class NatsUnreachable(HsmfleetError):
    """No NATS server answered a first connection in time."""

    kind = "nats_unreachable"


FIRST_CONNECT_S = 30.0
"""How long a party keeps trying to reach NATS the first time before giving up with an error
(after that, nats-py reconnects on its own)."""


def _check_seed(seed_file: Path) -> None:
    try:
        text = seed_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        error = getattr(exc, "strerror", None) or str(exc)
        raise CredentialsError(
            "cannot read the NATS seed file", path=str(seed_file), error=error
        ) from None
    try:
        pair = nkeys.from_seed(bytearray(text.encode()))
    except (nkeys.NkeysError, ValueError):
        raise CredentialsError(
            "the NATS seed file holds no nkey seed", path=str(seed_file)
        ) from None
    try:
        if not pair.public_key.startswith(b"U"):
            raise CredentialsError(
                "the NATS seed file holds no user nkey seed", path=str(seed_file)
            )
    finally:
        pair.wipe()


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        error = getattr(exc, "strerror", None) or str(exc)
        raise CredentialsError(
            "cannot read the NATS CA file", path=str(ca_file), error=error
        ) from None


def party_options(
    role: str, party_id: str, seed_file: str | Path | None, ca_file: str | Path | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` as ``role``/``party_id``: the connection's name,
    the seed file that answers the server's nonce, the party's inbox prefix, and with
    ``ca_file`` a TLS context that trusts only that CA. Without a seed file (a server with no
    authentication) only the name.

    Raises :class:`CredentialsError` for an unknown role or id, a CA file without a seed file,
    or a seed or CA file that cannot be read or holds the wrong thing; nothing is connected then.
    """
    if role not in ROLES:
        raise CredentialsError("unknown NATS role", role=role, roles=ROLES)
    try:
        party = Party(role, subjects.token(party_id, f"{role} id"))
    except BadSubject as exc:
        raise CredentialsError(f"not a NATS party id: {exc}", id=party_id) from None
    if seed_file is None:
        if ca_file is not None:
            raise CredentialsError("a NATS CA file is given without the party's seed file")
        return {"name": party.name}
    seed_file = Path(seed_file)
    _check_seed(seed_file)
    options: dict[str, Any] = {
        "name": party.name,
        "nkeys_seed": str(seed_file),
        "inbox_prefix": party.inbox,
    }
    if ca_file is not None:
        options["tls"] = _tls_context(Path(ca_file))
    return options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--nats-seed FILE`` and ``--nats-ca FILE``, for a process that connects as one party."""
    parser.add_argument(
        "--nats-seed",
        type=Path,
        help="this party's NATS nkey seed file (keys/<role>-<id>.nk of a bundle that "
        "hsmfleet nats secure or nats up wrote)",
    )
    parser.add_argument(
        "--nats-ca", type=Path, help="the CA file of NATS servers that require TLS (tls/ca.pem)"
    )


async def _abandon(nc: NATS, connecting: asyncio.Future[None]) -> None:
    """Stop a first connection that nats-py would otherwise keep retrying."""
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, nats.errors.Error):
        await connecting
    await nc.close()


def _refusal(exc: BaseException) -> bool:
    return "authorization violation" in str(exc).lower()


async def connect(
    servers: str | list[str],
    party: Mapping[str, Any],
    *,
    first_connect_s: float = FIRST_CONNECT_S,
    **options: Any,
) -> NATS:
    """``nats.connect`` with a party's options (:func:`party_options`) and any others.

    nats-py keeps retrying a first connection for ever. Here a refusal (the servers do not know
    the party's key) raises :class:`CredentialsError` at once; every failed try is logged as it
    happens, and no answer within ``first_connect_s`` raises :class:`NatsUnreachable`. Later
    refusals and failures, on reconnects, go to the ``error_cb`` as any other error.
    """
    refused: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    report = options.pop("error_cb", None)

    async def on_error(exc: Exception) -> None:
        if _refusal(exc) and not refused.done():
            refused.set_result(exc)
        elif not nc.is_connected:
            log.warning("NATS not reachable yet; retrying", servers=servers, error=repr(exc))
        if report is not None:
            await report(exc)

    nc = NATS()
    connecting = asyncio.ensure_future(nc.connect(servers, error_cb=on_error, **party, **options))
    try:
        await asyncio.wait(
            {connecting, refused}, timeout=first_connect_s, return_when=asyncio.FIRST_COMPLETED
        )
    except asyncio.CancelledError:
        await _abandon(nc, connecting)
        raise
    if not connecting.done() and not refused.done():
        await _abandon(nc, connecting)
        raise NatsUnreachable(
            f"no NATS server answered within {first_connect_s:g}s", servers=servers
        )
    if connecting.done():
        error = connecting.exception()
        if error is None:
            return nc
        if not _refusal(error):
            raise error
    await _abandon(nc, connecting)
    raise CredentialsError(
        "the NATS servers refused this party's credentials", name=party.get("name")
    )
