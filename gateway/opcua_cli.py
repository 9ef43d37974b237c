"""`millgate opcua browse URL [--depth N]`: prints an OPC-UA server's address space under Objects as an
indented tree (browse name, node class, NodeId, data type and value of variables), with each node's
`node_id` and `browse_path` ready to paste into an adapter file. `millgate opcua cert ADAPTER [--pem]`:
prints an adapter's client certificate (made first if it does not exist yet) for the server's trust list.

asyncua and the certificate code are imported only when a command runs, so the rest of the CLI stays
light. Browse is read-only; cert writes only the adapter's own certificate and key, once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
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


def cmd_opcua_cert(args: argparse.Namespace) -> int:
    from adapters.opcua.certificate import CertificateError, certificate_for_adapter
    from gateway.adapter_config import OpcuaAdapter
    from gateway.cli_support import EXIT_FAILED, EXIT_INVALID, load_or_exit, paths_for

    loaded = load_or_exit(args)
    adapter_file = loaded.adapters.get(args.adapter)
    if adapter_file is None or not isinstance(adapter_file.config, OpcuaAdapter):
        known = sorted(name for name, a in loaded.adapters.items() if isinstance(a.config, OpcuaAdapter))
        print(
            f"millgate opcua cert: no OPC-UA adapter {args.adapter!r} in {loaded.config_dir}/adapters "
            f"(OPC-UA adapters: {', '.join(known) or 'none'})",
            file=sys.stderr,
        )
        return EXIT_INVALID
    config = adapter_file.config
    try:
        cert = certificate_for_adapter(config, paths_for(args, loaded).state_dir, adapter_file.path.parent)
    except CertificateError as exc:
        print(f"millgate opcua cert: {adapter_file.path}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if cert.created and os.geteuid() == 0:
        # made by root for an adapter that runs as the service user, which must be able to read its key
        from gateway.service_user import service_user

        owner = service_user().owner
        for path in (cert.cert_path.parent.parent, cert.cert_path.parent, cert.cert_path, cert.key_path):
            os.chown(path, *owner)
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
