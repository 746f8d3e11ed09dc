"""Command line and site file of an agent, as OCS's ``ocs.site_config``.

``parse_args(agent_class=..., parser=...)`` adds the options every agent
takes (the same names and environment variables as the Rust binaries) to the
agent's own parser, then parses the arguments the site file gives the
instance followed by the command line, so that the command line overrides the
site file. The site file is the project's own (``deploy/site.yaml``): the
hub's ``nats-url`` and ``address-root``, and ``arguments`` from the
instance's entry.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

SITE_FILE_ENV = "OCS_SITE_FILE"
SITE_HOST_ENV = "OCS_SITE_HOST"


class SiteError(Exception):
    """A site file that cannot be used: ``file:line: reason``."""

    def __init__(self, file: Path, line: int, reason: str):
        super().__init__(f"{file}:{line}: {reason}")
        self.file, self.line, self.reason = file, line, reason


@dataclass
class Instance:
    """An agent instance's entry in the site file."""

    host: str
    agent_class: str
    instance_id: str
    arguments: list[str]


@dataclass
class SiteConfig:
    """What an agent takes from the site file."""

    file: Path
    nats_url: str | None
    address_root: str | None
    instances: list[Instance]

    @classmethod
    def load(cls, file: Path) -> SiteConfig:
        try:
            text = file.read_text()
        except OSError as err:
            raise SiteError(file, 0, f"cannot read: {err.strerror}") from err
        try:
            root = yaml.compose(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 0
            raise SiteError(file, line, f"not YAML: {getattr(err, 'problem', err)}") from err
        return cls._from_node(file, root)

    @classmethod
    def _from_node(cls, file: Path, root) -> SiteConfig:
        def fail(node, reason):
            return SiteError(file, node.start_mark.line + 1 if node is not None else 1, reason)

        def mapping(node, what):
            if not isinstance(node, yaml.MappingNode):
                raise fail(node, f"{what} must be a mapping")
            return {key.value: value for key, value in node.value}

        def text(node, what):
            if not isinstance(node, yaml.ScalarNode) or node.value == "":
                raise fail(node, f"{what} must be text")
            return node.value

        if root is None:
            raise SiteError(file, 1, "the file is empty")
        top = mapping(root, "the site file")
        hub = mapping(top["hub"], "hub") if "hub" in top else {}
        nats_url = text(hub["nats-url"], "hub.nats-url") if "nats-url" in hub else None
        address_root = (
            text(hub["address-root"], "hub.address-root") if "address-root" in hub else None
        )
        instances = []
        hosts = mapping(top["hosts"], "hosts") if "hosts" in top else {}
        for host, host_node in hosts.items():
            entries = mapping(host_node, f"hosts.{host}").get("agent-instances")
            if entries is None:
                continue
            if not isinstance(entries, yaml.SequenceNode):
                raise fail(entries, f"hosts.{host}.agent-instances must be a list")
            for entry_node in entries.value:
                entry = mapping(entry_node, "an agent instance")
                for key in ("agent-class", "instance-id"):
                    if key not in entry:
                        raise fail(entry_node, f"an agent instance has no {key}")
                arguments = []
                if "arguments" in entry:
                    arguments = _arguments(entry["arguments"], fail)
                instances.append(
                    Instance(
                        host=host,
                        agent_class=text(entry["agent-class"], "agent-class"),
                        instance_id=text(entry["instance-id"], "instance-id"),
                        arguments=arguments,
                    )
                )
        return cls(file, nats_url, address_root, instances)

    def instance(self, instance_id: str) -> Instance | None:
        return next((i for i in self.instances if i.instance_id == instance_id), None)

    def arguments_for(self, instance_id: str) -> list[str]:
        """The hub's settings, then the instance's own arguments."""
        arguments = []
        if self.nats_url:
            arguments += ["--nats-url", self.nats_url]
        if self.address_root:
            arguments += ["--address-root", self.address_root]
        instance = self.instance(instance_id)
        if instance is not None:
            arguments += instance.arguments
        return arguments


def _arguments(node, fail) -> list[str]:
    """OCS's ``[[--mode, acq], [--verbose]]`` (or a flat list) as argv words."""
    if not isinstance(node, yaml.SequenceNode):
        raise fail(node, "arguments must be a list")
    words = []
    for item in node.value:
        parts = item.value if isinstance(item, yaml.SequenceNode) else [item]
        for part in parts:
            if not isinstance(part, yaml.ScalarNode):
                raise fail(part, "arguments must be text")
            words.append(part.value)
    return words


def add_arguments(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Adds the options every agent and client takes."""
    if parser is None:
        parser = argparse.ArgumentParser()
    group = parser.add_argument_group("ocs-nats")
    env = os.environ.get
    group.add_argument("--instance-id", default=env("INSTANCE_ID"), help="this agent's instance id")
    group.add_argument(
        "--site-file",
        default=env(SITE_FILE_ENV) or None,
        help=f"site file; the instance's entry supplies arguments (env {SITE_FILE_ENV})",
    )
    group.add_argument("--site-host", default=env(SITE_HOST_ENV) or None)
    group.add_argument("--nats-url", default=env("NATS_URL", "nats://127.0.0.1:4222"))
    group.add_argument("--address-root", default=env("OCS_ADDRESS_ROOT", "observatory"))
    group.add_argument(
        "--log-format",
        default=env("LOG_FORMAT", "text"),
        choices=["text", "json"],
        help="human-readable text or one JSON object per line (env LOG_FORMAT)",
    )
    group.add_argument(
        "--nats-creds", default=env("NATS_CREDS"), help="credentials file (JWT and nkey seed)"
    )
    group.add_argument(
        "--access-policy",
        default=None,
        help="OCS's access policy: only 'none' here; NATS user permissions decide "
        "who may call which operation (deploy/nats/README.md)",
    )
    group.add_argument("--nats-tls-ca", default=env("NATS_TLS_CA"))
    group.add_argument("--nats-tls-cert", default=env("NATS_TLS_CERT"))
    group.add_argument("--nats-tls-key", default=env("NATS_TLS_KEY"))
    # User and password come from NATS_USER and NATS_PASSWORD only: a
    # password on the command line shows in `ps`.
    return parser


def parse_args(
    agent_class: str | None = None,
    parser: argparse.ArgumentParser | None = None,
    args: list[str] | None = None,
) -> argparse.Namespace:
    """Parses the site file's arguments for the instance, then ``args``."""
    parser = add_arguments(parser)
    if args is None:
        args = sys.argv[1:]
    first, _ = parser.parse_known_args(args)
    site_args: list[str] = []
    if first.site_file and first.instance_id:
        try:
            site = SiteConfig.load(Path(first.site_file))
        except SiteError as err:
            parser.error(str(err))
        instance = site.instance(first.instance_id)
        if instance is None:
            parser.error(f"{first.site_file}: no agent instance {first.instance_id!r}")
        if agent_class is not None and instance.agent_class != agent_class:
            parser.error(
                f"{first.site_file}: instance {first.instance_id!r} is a "
                f"{instance.agent_class}, not a {agent_class}"
            )
        site_args = site.arguments_for(first.instance_id)
    parsed = parser.parse_args(site_args + args)
    if not parsed.instance_id:
        parser.error("--instance-id (or INSTANCE_ID) is required")
    if parsed.access_policy not in (None, "", "none"):
        parser.error(
            f"--access-policy {parsed.access_policy!r}: ocs-nats controls access with NATS "
            "user permissions (deploy/nats/README.md), not OCS access policies"
        )
    parsed.agent_class = agent_class
    parsed.nats_user = os.environ.get("NATS_USER")
    parsed.nats_password = os.environ.get("NATS_PASSWORD")
    return parsed
