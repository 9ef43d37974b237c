"""`millgate opcua browse URL [--depth N]`: prints an OPC-UA server's address space under Objects as an
indented tree (browse name, node class, NodeId, data type and value of variables), with each node's
`node_id` and `browse_path` ready to paste into an adapter file. `millgate opcua cert ADAPTER [--pem]`:
prints an adapter's client certificate (made first if it does not exist yet) for the server's trust list.
`millgate opcua trust list [ADAPTER] | accept ADAPTER SHA1 | reject ADAPTER SHA1`: the server
certificates an adapter trusts (`<state>/opcua/<adapter>/pki/trusted/`) or has refused (`rejected/`).

asyncua and the certificate code are imported only when a command runs, so the rest of the CLI stays
light. Browse is read-only; cert writes only the adapter's own certificate and key, once; trust only
moves files between the adapter's trusted/ and rejected/ folders.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

DEFAULT_DEPTH = 3
MAX_CHILDREN = 200  # per node: a server with 10,000 tags in one folder stays readable


async def _browse(url: str, depth: int, timeout_s: float, user: str | None, password: str | None) -> list[str]:
    from asyncua import Client, ua

    lines: list[str] = []
    client = Client(url, timeout=timeout_s)
    if user is not None:
        client.set_user(user)
        client.set_password(password or "")

    async def walk(node: Any, path: list[str], level: int) -> None:
        children = await node.get_children()
        for child in children[:MAX_CHILDREN]:
            name = await child.read_browse_name()
            node_class = await child.read_node_class()
            child_path = [*path, f"{name.NamespaceIndex}:{name.Name}"]
            line = f"{'  ' * level}{name.Name}  [{node_class.name}]  node_id={child.nodeid.to_string()}"
            if node_class == ua.NodeClass.Variable:
                try:
                    value = await child.read_data_value(raise_on_bad_status=False)
                    vtype = value.Value.VariantType.name if value.Value is not None else "?"
                    shown = repr(value.Value.Value if value.Value is not None else None)
                    line += f"  type={vtype}  value={shown[:60]}"
                except ua.UaError as exc:
                    line += f"  (unreadable: {exc})"
            lines.append(f"{line}  browse_path={'/'.join(child_path)}")
            if level + 1 < depth and node_class == ua.NodeClass.Object:
                await walk(child, child_path, level + 1)
        if len(children) > MAX_CHILDREN:
            lines.append(f"{'  ' * level}... {len(children) - MAX_CHILDREN} more")

    async with asyncio.timeout(timeout_s * 4):
        await client.connect()
    try:
        async with asyncio.timeout(max(timeout_s * 20, 60)):
            await walk(client.nodes.objects, [], 0)
    finally:
        async with asyncio.timeout(timeout_s):
            await client.disconnect()
    return lines


def cmd_opcua_browse(args: argparse.Namespace) -> int:
    import logging

    logging.getLogger("asyncua").setLevel(logging.CRITICAL)
    try:
        lines = asyncio.run(_browse(args.url, args.depth, args.timeout, args.user, args.password))
    except TimeoutError:
        print(f"millgate opcua browse: {args.url}: no answer within {args.timeout:g} s", file=sys.stderr)
        return 1
    except (OSError, ConnectionError) as exc:
        print(f"millgate opcua browse: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # asyncua's errors: the CLI's edge, where the operator reads them
        print(f"millgate opcua browse: {args.url}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{args.url} (Objects, depth {args.depth})")
    for line in lines:
        print(line)
    return 0


def opcua_adapters(args: argparse.Namespace, command: str, name: str | None) -> tuple[Any, list[Any]]:
    """The loaded config and the OPC-UA adapter files `name` selects (all when None); exits 2 naming
    the known ones when there is no such adapter."""
    from gateway.adapter_config import OpcuaAdapter
    from gateway.cli_support import EXIT_INVALID, load_or_exit

    loaded = load_or_exit(args)
    found = sorted(
        (a for a in loaded.adapters.values() if isinstance(a.config, OpcuaAdapter)), key=lambda a: a.config.name
    )
    if name is None:
        return loaded, found
    selected = [a for a in found if a.config.name == name]
    if not selected:
        known = ", ".join(a.config.name for a in found) or "none"
        print(
            f"millgate opcua {command}: no OPC-UA adapter {name!r} in {loaded.config_dir}/adapters "
            f"(OPC-UA adapters: {known})",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_INVALID)
    return loaded, selected


def cmd_opcua_cert(args: argparse.Namespace) -> int:
    from adapters.opcua.certificate import CertificateError, certificate_for_adapter
    from gateway.cli_support import EXIT_FAILED, paths_for

    loaded, [adapter_file] = opcua_adapters(args, "cert", args.adapter)
    config = adapter_file.config
    try:
        cert = certificate_for_adapter(config, paths_for(args, loaded).state_dir, adapter_file.path.parent)
    except CertificateError as exc:
        print(f"millgate opcua cert: {adapter_file.path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if cert.created:
        _hand_to_adapter(cert.cert_path.parent)  # the adapter must be able to read its key
    valid = f"{cert.not_before:%Y-%m-%d %H:%M:%S} UTC to {cert.not_after:%Y-%m-%d %H:%M:%S} UTC"
    print(f"adapter      {config.name}{'  (created now)' if cert.created else ''}")
    print(f"certificate  {cert.cert_path}")
    print(f"private key  {cert.key_path}")
    print(f"subject      {cert.subject}")
    print(f"valid        {valid}")
    print(f"SHA-1        {cert.thumbprint}")
    print(f"SHA-256      {cert.sha256}")
    if config.security_policy == "None":
        print("note         security_policy is None: the adapter does not present this certificate yet")
    else:
        print("trust it     on the OPC-UA server (its trust list, or move it out of the rejected folder)")
    if args.pem:
        print(cert.pem, end="")
    return 0


def _trust_store(args: argparse.Namespace, loaded: Any, name: str) -> Any:
    from adapters.opcua.trust import TrustStore, pki_dir
    from gateway.cli_support import paths_for

    return TrustStore(pki_dir(paths_for(args, loaded).state_dir, name))


def _hand_to_adapter(adapter_dir: Path) -> None:
    """What root made or moved under an adapter's state dir (<state>/opcua/<adapter>) belongs to the
    adapter's uid, which writes there too: the dir's owner, as `millgate run` set it, or the service
    user before any run (the next run hands it on)."""
    if os.geteuid() != 0 or not adapter_dir.exists():
        return
    from gateway.owned_dirs import chown_tree
    from gateway.service_user import service_user

    info = adapter_dir.stat()
    chown_tree(adapter_dir, (info.st_uid, info.st_gid) if info.st_uid != 0 else service_user().owner)


def cmd_opcua_trust_list(args: argparse.Namespace) -> int:
    loaded, adapter_files = opcua_adapters(args, "trust list", args.adapter)
    if not adapter_files:
        print(f"no OPC-UA adapters in {loaded.config_dir}/adapters")
        return 0
    print(f"{'ADAPTER':<16} {'STATE':<9} {'SHA-1':<59} {'NOT AFTER (UTC)':<19}  SUBJECT")
    for adapter_file in adapter_files:
        config = adapter_file.config
        store = _trust_store(args, loaded, config.name)
        shown = 0
        for state, directory in (("trusted", store.trusted_dir), ("rejected", store.rejected_dir)):
            certificates, problems = store.scan(directory)
            for cert in certificates:
                expires = f"{cert.not_after:%Y-%m-%d %H:%M:%S}"
                print(f"{config.name:<16} {state:<9} {cert.thumbprint:<59} {expires}  {cert.subject}")
            for problem in problems:
                print(f"{config.name:<16} {state:<9} unreadable: {problem}")
            shown += len(certificates) + len(problems)
        if not shown:
            note = (
                "security_policy None: no server certificate is checked"
                if config.security_policy == "None"
                else (f"no server certificate seen yet (trust = {config.trust!r})")
            )
            print(f"{config.name:<16} {'-':<9} {note}")
    return 0


def _cmd_opcua_trust_move(args: argparse.Namespace, verb: str) -> int:
    from adapters.opcua.trust import TrustError
    from gateway.cli_support import EXIT_FAILED, EXIT_INVALID

    loaded, [adapter_file] = opcua_adapters(args, f"trust {verb}", args.adapter)
    store = _trust_store(args, loaded, adapter_file.config.name)
    try:
        cert = store.accept(args.thumbprint) if verb == "accept" else store.reject(args.thumbprint)
    except ValueError as exc:
        print(f"millgate opcua trust {verb}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except TrustError as exc:
        print(f"millgate opcua trust {verb}: {adapter_file.config.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _hand_to_adapter(store.pki.parent)
    done = "accepted" if verb == "accept" else "rejected"
    print(f"{done}  {adapter_file.config.name}  {cert.thumbprint}  {cert.subject}")
    print(f"file      {cert.path}")
    if verb == "accept":
        print("the adapter uses it at its next connection attempt (no restart needed)")
    else:
        print("the adapter refuses it from its next connection on (restart the adapter to drop a live session)")
    return 0


def cmd_opcua_trust_accept(args: argparse.Namespace) -> int:
    return _cmd_opcua_trust_move(args, "accept")


def cmd_opcua_trust_reject(args: argparse.Namespace) -> int:
    return _cmd_opcua_trust_move(args, "reject")


def add_opcua_parser(verbs: Any, common: argparse.ArgumentParser) -> None:
    opcua = verbs.add_parser("opcua", help="explore OPC-UA servers to write adapter files", parents=[common])
    opcua_verbs = opcua.add_subparsers(dest="opcua_verb", required=True, metavar="ACTION")
    browse = opcua_verbs.add_parser("browse", help="print the address space under Objects", parents=[common])
    browse.add_argument("url", help="the endpoint, e.g. opc.tcp://10.0.3.5:4840/")
    browse.add_argument(
        "--depth", type=int, default=DEFAULT_DEPTH, help=f"levels below Objects (default {DEFAULT_DEPTH})"
    )
    browse.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default 5)")
    browse.add_argument("--user", default=None, help="user name (default: anonymous)")
    browse.add_argument("--password", default=None)
    browse.set_defaults(handler=cmd_opcua_browse)
    cert = opcua_verbs.add_parser(
        "cert", help="print an adapter's client certificate and thumbprints (made if missing)", parents=[common]
    )
    cert.add_argument("adapter", help="the adapter's name (its adapters/<name>.toml)")
    cert.add_argument("--pem", action="store_true", help="print the certificate as PEM too")
    cert.set_defaults(handler=cmd_opcua_cert)
    trust = opcua_verbs.add_parser(
        "trust", help="the server certificates an adapter trusts (secured policies only)", parents=[common]
    )
    trust_verbs = trust.add_subparsers(dest="trust_verb", required=True, metavar="ACTION")
    listing = trust_verbs.add_parser("list", help="trusted and rejected server certificates", parents=[common])
    listing.add_argument("adapter", nargs="?", default=None, help="one adapter (default: every OPC-UA adapter)")
    listing.set_defaults(handler=cmd_opcua_trust_list)
    for verb, handler, what in (
        ("accept", cmd_opcua_trust_accept, "move a rejected server certificate to trusted"),
        ("reject", cmd_opcua_trust_reject, "move a trusted server certificate to rejected"),
    ):
        action = trust_verbs.add_parser(verb, help=what, parents=[common])
        action.add_argument("adapter", help="the adapter's name (its adapters/<name>.toml)")
        action.add_argument("thumbprint", help="SHA-1 thumbprint as `trust list` shows it (colons optional)")
        action.set_defaults(handler=handler)
