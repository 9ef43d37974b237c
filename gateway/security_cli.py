"""`millgate ca init|show|rotate` and `millgate device add|list|revoke|check`: the operator's verbs for the
group CA and device certificates, with their arguments, output and exit codes.

The certificate work is gateway/ca.py's; this module parses, prints and tells the broker to reload.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from gateway import device_registry
from gateway.broker_reload import BrokerReloadFailed, reload_broker, restart_broker
from gateway.ca import (
    CaError,
    file_owner,
    init_ca,
    issue_device_cert,
    load_ca,
    load_server_cert,
    now_utc,
    parse_csr,
    record_device,
    renewal_time,
    revoke_device,
    rotate_ca,
    validate_thing_name,
    write_device_files,
)
from gateway.cli_support import EXIT_FAILED, EXIT_INVALID, EXIT_OK, load_or_exit, paths_for
from gateway.config_loader import ConfigInvalid, LoadedConfig, load_config
from gateway.deploy_store import DeploymentStore
from gateway.device_registry import RegistryCorrupt
from gateway.device_reissue import Reissued, prepare_out_dir, reissue_devices
from gateway.launch import write_acl
from gateway.paths import GatewayPaths

NOT_RUNNING = "the gateway is not running; it uses the new files when it starts"


def _fail(verb: str, exc: Exception) -> int:
    print(f"millgate {verb}: {exc}", file=sys.stderr)
    return EXIT_FAILED


def _stamp(value: Any) -> str:
    return f"{value:%Y-%m-%dT%H:%M:%SZ}"


def cmd_ca_init(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    try:
        ca = init_ca(paths, loaded.gateway, file_owner())
    except (CaError, OSError) as exc:
        return _fail("ca init", exc)
    print(f"group CA created: {ca.cert.subject.rfc4514_string()} (valid until {_stamp(ca.cert.not_valid_after_utc)})")
    print(f"certificate: {paths.ca_cert}")
    if reload_broker(paths):
        print("broker reloaded")
    return EXIT_OK


def cmd_ca_show(args: argparse.Namespace) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    try:
        ca = load_ca(paths)
        records = device_registry.load_records(paths.device_registry)
    except (CaError, RegistryCorrupt) as exc:
        return _fail("ca show", exc)
    if args.pem:
        sys.stdout.write(ca.pem.decode())
        return EXIT_OK
    server = load_server_cert(paths)
    info: dict[str, Any] = {
        "ca": {
            "subject": ca.cert.subject.rfc4514_string(),
            "serial": f"{ca.serial:x}",
            "sha256": ca.cert.fingerprint(hashes.SHA256()).hex(),
            "not_before": _stamp(ca.cert.not_valid_before_utc),
            "not_after": _stamp(ca.cert.not_valid_after_utc),
            "file": str(paths.ca_cert),
        },
        "server": None,
        "revoked": sum(1 for r in records if r.ca_serial == ca.serial and r.revoked_at is not None),
    }
    if server is not None:
        san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        info["server"] = {
            "serial": f"{server.serial_number:x}",
            "not_after": _stamp(server.not_valid_after_utc),
            "renews_at": _stamp(renewal_time(server, loaded.gateway.broker.server_cert_renew_at)),
            "names": [*san.get_values_for_type(x509.DNSName), *map(str, san.get_values_for_type(x509.IPAddress))],
        }
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    print(f"group CA     {info['ca']['subject']}")
    print(f"  serial     {info['ca']['serial']}")
    print(f"  sha256     {info['ca']['sha256']}")
    print(f"  valid      {info['ca']['not_before']} .. {info['ca']['not_after']}")
    if info["server"]:
        print(f"broker cert  expires {info['server']['not_after']}, renewed from {info['server']['renews_at']}")
        print(f"  names      {' '.join(info['server']['names'])}")
    print(f"revoked device certificates: {info['revoked']}")
    return EXIT_OK


def cmd_ca_rotate(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    out: Path | None = args.reissue_devices
    reissued = None
    try:
        if out is not None:
            prepare_out_dir(out)
        ca = rotate_ca(paths, loaded.gateway, file_owner())
        if out is not None:
            days = args.days or loaded.gateway.broker.device_cert_days
            reissued = reissue_devices(paths, out, days, file_owner())
        restarted = restart_broker(paths)
    except (CaError, RegistryCorrupt, OSError, BrokerReloadFailed) as exc:
        return _fail("ca rotate", exc)
    print(f"new group CA: {ca.cert.subject.rfc4514_string()}")
    if reissued is None:
        print(
            "every device certificate from the previous CA is now refused; re-issue them with "
            "`millgate device add` (or rotate with --reissue-devices DIR)"
        )
    else:
        _print_reissued(reissued)
    print("broker restarted: connections made under the old CA are closed" if restarted else NOT_RUNNING)
    return EXIT_FAILED if reissued is not None and reissued.failed else EXIT_OK


def _print_reissued(reissued: Reissued) -> None:
    for thing, written in sorted(reissued.issued.items()):
        print(f"re-issued {thing}: {' '.join(str(p) for p in written)}")
    if not reissued.issued:
        print("no device to re-issue with a generated key")
    if reissued.need_csr:
        print(
            f"not re-issued, enrolled with their own CSR: {', '.join(sorted(reissued.need_csr))}; each needs "
            "a new CSR from the device: `millgate device add THING --csr FILE`"
        )
    for thing, why in sorted(reissued.failed.items()):
        print(f"millgate ca rotate: {thing}: not re-issued: {why}", file=sys.stderr)


def cmd_device_add(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    thing = args.thing
    try:
        validate_thing_name(thing)
        if thing == loaded.gateway.gateway.thing_name:
            raise CaError(f"{thing!r} is this gateway's own thing name; a device needs its own")
        csr = None
        if args.csr is not None:
            try:
                data = args.csr.read_bytes()
            except OSError as exc:
                raise CaError(f"{args.csr}: cannot read the CSR: {exc.strerror}") from exc
            csr = parse_csr(data, str(args.csr), thing)
        ca = load_ca(paths)
        issued = issue_device_cert(ca, thing, args.days or loaded.gateway.broker.device_cert_days, csr)
        written = write_device_files(issued, ca, args.out or Path(thing))
        record_device(paths, issued, ca, file_owner())
        if paths.acl_file.exists():  # a thing revoked before gets its grants back with its new certificate
            _write_deployed_acl(loaded, paths)
            with contextlib.suppress(BrokerReloadFailed):
                reload_broker(paths)
    except (CaError, RegistryCorrupt) as exc:
        print(f"millgate device add: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:
        return _fail("device add", exc)
    print(
        f"issued {thing}: serial {issued.cert.serial_number:x}, valid until {_stamp(issued.cert.not_valid_after_utc)}"
    )
    for path in written:
        print(f"  {path}")
    return EXIT_OK


def cmd_device_list(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    try:
        ca = load_ca(paths)
        records = device_registry.load_records(paths.device_registry)
    except (CaError, RegistryCorrupt) as exc:
        return _fail("device list", exc)
    now = now_utc()
    rows = [{**r.as_json(), "state": r.state(ca.serial, now)} for r in records]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    print(f"{'THING':<32} {'SERIAL':<42} {'STATE':<14} NOT AFTER")
    for row, record in zip(rows, records, strict=True):
        print(f"{record.thing:<32} {row['serial']:<42} {row['state']:<14} {_stamp(record.not_after)}")
    return EXIT_OK


def cmd_device_revoke(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    try:
        count = revoke_device(paths, args.thing, file_owner())
        if count:
            _write_deployed_acl(loaded, paths)  # cut off a connection made before the revocation, too
        reloaded = reload_broker(paths) if count else False
    except (CaError, RegistryCorrupt, OSError, BrokerReloadFailed) as exc:
        return _fail("device revoke", exc)
    if not count:
        print(f"millgate device revoke: {args.thing} has no current certificate to revoke", file=sys.stderr)
        return EXIT_FAILED
    print(f"revoked {count} certificate(s) of {args.thing}")
    print(
        "broker reloaded: the device's grants are gone and it is refused when it reconnects"
        if reloaded
        else NOT_RUNNING
    )
    return EXIT_OK


def cmd_device_check(args: argparse.Namespace) -> int:
    from cryptography import x509

    from gateway.device_check import check_device_cert

    loaded = load_or_exit(args)
    paths = paths_for(args, loaded)
    try:
        data = args.cert.read_bytes()
    except OSError as exc:
        print(f"millgate device check: {args.cert}: cannot read: {exc.strerror}", file=sys.stderr)
        return EXIT_INVALID
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
    except ValueError as exc:
        print(f"millgate device check: {args.cert}: not a PEM or DER certificate: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        records = device_registry.load_records(paths.device_registry)
    except (OSError, ValueError, RegistryCorrupt) as exc:
        return _fail("device check", exc)
    verdict = check_device_cert(cert, ca, records, now_utc())
    if args.json:
        print(json.dumps({"thing": verdict.thing, "accepted": verdict.accepted, "reason": verdict.reason}))
    else:
        print(f"{verdict.thing or '-'}: {'accepted' if verdict.accepted else 'refused'}: {verdict.reason}")
    return EXIT_OK if verdict.accepted else EXIT_FAILED


def _write_deployed_acl(loaded: LoadedConfig, paths: GatewayPaths) -> None:
    """Rewrite the broker's ACL from the config the gateway runs: the current deployment's, which
    `millgate deploy --config X` or the cloud may have moved on from --config (`loaded`), under the
    deployment lock so that no deployment renders another ACL in between."""
    store = DeploymentStore(paths.state_dir)
    if store.current() is None:  # never started or deployed: --config is all there is
        write_acl(loaded, paths)
        return
    with store.locked():
        try:
            running = load_config(store.current_config)
        except ConfigInvalid as exc:
            print(f"millgate device: {store.current_config}: invalid, the ACL follows --config: {exc}", file=sys.stderr)
            running = loaded
        write_acl(running, paths)


def _days(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 3650:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of days between 1 and 3650")
    return int(value)


def add_security_parsers(verbs: Any, common: argparse.ArgumentParser) -> None:
    """Register `ca` and `device` on the top-level sub-parser collection of `millgate`."""
    ca = verbs.add_parser("ca", help="the group certificate authority", parents=[common])
    ca_verbs = ca.add_subparsers(dest="ca_verb", required=True, metavar="ACTION")
    init = ca_verbs.add_parser("init", help="create the group CA (the gateway does on first start)", parents=[common])
    init.set_defaults(handler=cmd_ca_init)
    show = ca_verbs.add_parser("show", help="the CA, the broker certificate and its names", parents=[common])
    show.add_argument("--pem", action="store_true", help="print the CA certificate (PEM) only")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(handler=cmd_ca_show)
    rotate = ca_verbs.add_parser(
        "rotate", help="replace the CA; old device certificates stop working", parents=[common]
    )
    rotate.add_argument(
        "--reissue-devices",
        type=Path,
        metavar="DIR",
        help="give every enrolled device (not revoked, not from a CSR) a new key and certificate in DIR/THING/",
    )
    rotate.add_argument("--days", type=_days, metavar="N", help="their lifetime (default: broker.device_cert_days)")
    rotate.set_defaults(handler=cmd_ca_rotate)

    device = verbs.add_parser("device", help="device certificates", parents=[common])
    device_verbs = device.add_subparsers(dest="device_verb", required=True, metavar="ACTION")
    add = device_verbs.add_parser("add", help="issue a client certificate for a thing", parents=[common])
    add.add_argument("thing", help="the thing name; the certificate's CN and the device's broker identity")
    add.add_argument("--csr", type=Path, metavar="FILE", help="sign the device's own CSR (PEM or DER)")
    add.add_argument("--out", type=Path, metavar="DIR", help="where to write the files (default: ./THING)")
    add.add_argument("--days", type=_days, metavar="N", help="lifetime (default: broker.device_cert_days)")
    add.set_defaults(handler=cmd_device_add)
    listing = device_verbs.add_parser("list", help="every issued certificate and its state", parents=[common])
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=cmd_device_list)
    revoke = device_verbs.add_parser("revoke", help="revoke a thing's certificates (CRL)", parents=[common])
    revoke.add_argument("thing")
    revoke.set_defaults(handler=cmd_device_revoke)
    check = device_verbs.add_parser(
        "check", help="whether the broker accepts a device certificate, and why not", parents=[common]
    )
    check.add_argument("cert", type=Path, metavar="FILE", help="the device's certificate (PEM or DER)")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=cmd_device_check)
