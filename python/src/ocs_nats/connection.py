"""Connecting to NATS as the Rust binaries do: URL(s), user and password or
a credentials file, and TLS, from the same options and environment."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import os
import ssl

import nats

from . import wire

log = logging.getLogger("ocs_nats.connection")


def args_from_env(**overrides) -> argparse.Namespace:
    """The connection settings a client takes from the environment (the
    variables the Rust binaries read), with ``overrides`` on top."""
    env = os.environ.get
    args = argparse.Namespace(
        nats_url=env("NATS_URL", "nats://127.0.0.1:4222"),
        address_root=env("OCS_ADDRESS_ROOT", "observatory"),
        nats_user=env("NATS_USER"),
        nats_password=env("NATS_PASSWORD"),
        nats_creds=env("NATS_CREDS"),
        nats_tls_ca=env("NATS_TLS_CA"),
        nats_tls_cert=env("NATS_TLS_CERT"),
        nats_tls_key=env("NATS_TLS_KEY"),
    )
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


def connect_options(args: argparse.Namespace, name: str) -> dict:
    """``nats.connect`` keyword arguments for ``args`` (see ``site_config``)."""
    options: dict = {
        "servers": [url.strip() for url in args.nats_url.split(",") if url.strip()],
        "name": name,
        # Agents run for months: never give up on the server.
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "allow_reconnect": True,
    }
    user, password = getattr(args, "nats_user", None), getattr(args, "nats_password", None)
    if user and password:
        options["user"], options["password"] = user, password
        prefix = wire.inbox_prefix(user)
        if prefix is not None:
            options["inbox_prefix"] = prefix
    if getattr(args, "nats_creds", None):
        options["user_credentials"] = args.nats_creds
        # A credential's user is named in its JWT; its replies come to that
        # name's inboxes, as with a password.
        prefix = wire.inbox_prefix(creds_user_name(args.nats_creds))
        if prefix is not None:
            options["inbox_prefix"] = prefix
    if getattr(args, "nats_tls_ca", None):
        context = ssl.create_default_context(cafile=args.nats_tls_ca)
        if getattr(args, "nats_tls_cert", None):
            context.load_cert_chain(args.nats_tls_cert, args.nats_tls_key)
        options["tls"] = context
    return options


def creds_user_name(path: str) -> str | None:
    """The user named in a ``.creds`` file's JWT (its ``name`` claim),
    unverified: the server checks the JWT, this only picks the inbox prefix.
    ``None`` when the file holds no readable JWT."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = [line.strip() for line in file]
        jwt = lines[lines.index("-----BEGIN NATS USER JWT-----") + 1]
        body = jwt.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (OSError, ValueError, IndexError):
        return None
    name = claims.get("name") if isinstance(claims, dict) else None
    return name if isinstance(name, str) else None


async def connect(
    args: argparse.Namespace, name: str, retry_initial: bool = False, **callbacks
) -> nats.NATS:
    """Connects; with ``retry_initial`` (agents) it keeps trying until the
    server answers, as a server that starts after its agents is normal."""
    delay = 0.1
    warned = False
    while True:
        try:
            return await nats.connect(**connect_options(args, name), **callbacks)
        except Exception as err:
            if not retry_initial:
                raise
            if not warned:
                log.warning("cannot reach NATS at %s (%s); retrying", args.nats_url, err)
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
