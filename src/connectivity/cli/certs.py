"""``connectivity certs``: development CAs and service certificates with SPIFFE ids, for tests and demos.

* ``connectivity certs ca bank.example -o certs/`` writes ``certs/bank.example-ca.pem`` and
  ``certs/bank.example-ca.key`` (mode 0600): a CA for one trust domain (one CA per trust domain).
* ``connectivity certs issue orders --ca certs/bank.example-ca.pem --spiffe-id
  spiffe://bank.example/ns/prod/sa/orders --dns orders.internal --ip 127.0.0.1 -o certs/`` writes
  ``certs/orders.pem`` and ``certs/orders.key`` (0600): an X509-SVID signed by that CA.
* ``connectivity certs show certs/orders.pem`` prints what a certificate says: SPIFFE id, SANs, validity.

Files are replaced atomically, and only with ``--force``. Bad arguments (an invalid SPIFFE id or trust domain, an
id outside the CA's trust domain, an unreadable CA, an existing file) print one line on stderr and exit with
status 2, without a traceback. The work is done by :mod:`connectivity.security.certs`.
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from pathlib import Path

from cryptography import x509

from connectivity.errors import ConfigError
from connectivity.security.certs import KEY_TYPES, create_ca, issue, load_ca
from connectivity.security.material import MaterialInput
from connectivity.security.x509 import dns_names, load_certificates, not_valid, svid_id, uri_names

__all__ = ["HELP", "configure", "run"]

HELP = "development CAs and service certificates with SPIFFE ids (X509-SVIDs), for tests and demos"

_ARGUMENTS = {
    "create_ca.trust_domain": "TRUST_DOMAIN",
    "issue.spiffe_id": "--spiffe-id",
    "issue.dns_names": "--dns",
    "issue.ip_addresses": "--ip",
    "load_ca.cert": "--ca",
    "load_ca.key": "--ca-key",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def _days(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of days, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _file_name(text: str) -> str:
    if not _NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"must be a plain file name (letters, digits, '.', '_', '-'), got {text!r}"
        )
    return text


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``ca``, ``issue`` and ``show`` actions."""
    actions = parser.add_subparsers(dest="certs_action", metavar="ACTION", required=True)

    ca = actions.add_parser(
        "ca", help="create a CA for one trust domain", description="Create a CA for one trust domain."
    )
    ca.add_argument("trust_domain", metavar="TRUST_DOMAIN", help="e.g. bank.example")
    ca.add_argument("--days", type=_days, default=365, help="validity in days (default: 365)")

    leaf = actions.add_parser(
        "issue", help="issue a service certificate signed by a CA", description="Issue a service certificate."
    )
    leaf.add_argument("name", metavar="NAME", type=_file_name, help="writes NAME.pem and NAME.key")
    leaf.add_argument("--ca", required=True, metavar="CA_PEM", help="the CA certificate (from 'certs ca')")
    leaf.add_argument("--ca-key", metavar="CA_KEY", help="its key (default: CA_PEM with .key for .pem)")
    leaf.add_argument(
        "--spiffe-id", metavar="ID", help="the SPIFFE id, e.g. spiffe://bank.example/ns/prod/sa/orders"
    )
    leaf.add_argument("--dns", action="append", default=[], metavar="NAME", help="a DNS SAN (repeatable)")
    leaf.add_argument(
        "--ip", action="append", default=[], metavar="ADDRESS", help="an IP address SAN (repeatable)"
    )
    leaf.add_argument("--days", type=_days, default=30, help="validity in days (default: 30)")
    use = leaf.add_mutually_exclusive_group()
    use.add_argument("--server-only", action="store_true", help="for TLS servers only (default: both uses)")
    use.add_argument("--client-only", action="store_true", help="for TLS clients only")

    for action in (ca, leaf):
        action.add_argument("-o", "--out", default=".", metavar="DIR", help="directory to write to (default: .)")
        action.add_argument(
            "--key-type", choices=KEY_TYPES, default="ec-p256", help="key algorithm (default: ec-p256)"
        )
        action.add_argument("--force", action="store_true", help="replace existing files")

    show = actions.add_parser(
        "show", help="print what certificates say", description="Print certificates' contents."
    )
    show.add_argument("files", nargs="+", metavar="FILE", help="PEM files")


def run(args: argparse.Namespace) -> int:
    """Carry out the action; 0 on success, 2 on bad arguments, 1 when a file cannot be written."""
    try:
        if args.certs_action == "ca":
            return _ca(args)
        if args.certs_action == "issue":
            return _issue(args)
        return _show(args)
    except (ConfigError, FileExistsError) as error:  # CertificateError and InvalidSpiffeIdError are ConfigErrors
        return _fail(error, 2)
    except OSError as error:
        return _fail(f"cannot write {error.filename or ''}: {error.strerror or error}", 1)


def _fail(error: object, status: int) -> int:
    if isinstance(error, FileExistsError):
        error = f"{error.filename} exists; pass --force to replace it"
    elif isinstance(error, ConfigError):  # name the command-line argument, not the library's parameter
        where = _ARGUMENTS.get(error.field, error.field)
        error = f"{where}: {error.rule}" if error.value is None else f"{where} {error.value!r}: {error.rule}"
    print(f"connectivity certs: error: {error}", file=sys.stderr)
    return status


def _targets(args: argparse.Namespace, stem: str) -> tuple[Path, Path]:
    out = Path(args.out)
    cert, key = out / f"{stem}.pem", out / f"{stem}.key"
    if not args.force:
        for path in (cert, key):
            if path.exists():
                raise FileExistsError(17, "exists", str(path))
    out.mkdir(parents=True, exist_ok=True)
    return cert, key


def _ca(args: argparse.Namespace) -> int:
    authority = create_ca(args.trust_domain, valid_for=datetime.timedelta(days=args.days), key_type=args.key_type)
    cert, key = _targets(args, f"{authority.trust_domain}-ca")
    authority.write(cert, key, overwrite=args.force)
    print(f"CA for trust domain {authority.trust_domain}: {cert} (certificate: the bundle peers trust)")
    print(f"{' ' * len('CA for trust domain ' + authority.trust_domain)}  {key} (private key, mode 0600)")
    return 0


def _issue(args: argparse.Namespace) -> int:
    ca_key = args.ca_key
    if ca_key is None:
        if not args.ca.endswith(".pem"):
            raise ConfigError("--ca-key", None, "is required when --ca does not end in .pem")
        ca_key = args.ca[: -len(".pem")] + ".key"
    authority = load_ca(args.ca, ca_key)
    issued = issue(
        authority,
        spiffe_id=args.spiffe_id,
        dns_names=args.dns,
        ip_addresses=args.ip,
        valid_for=datetime.timedelta(days=args.days),
        server=not args.client_only,
        client=not args.server_only,
        key_type=args.key_type,
        name=args.name,
    )
    cert, key = _targets(args, args.name)
    issued.write(cert, key, overwrite=args.force)
    print(f"{cert} (certificate), {key} (private key, mode 0600), signed by {args.ca}")
    _describe(issued.certificate)
    return 0


def _show(args: argparse.Namespace) -> int:
    for name in args.files:
        data = MaterialInput("FILE", path=name).read()
        for index, certificate in enumerate(load_certificates(data, source=name)):
            print(f"{name} [{index}]")
            _describe(certificate)
    return 0


def _describe(certificate: x509.Certificate) -> None:
    try:
        spiffe_id = f"{svid_id(certificate)} (X509-SVID)"
    except ConfigError as error:
        spiffe_id = f"none ({error.rule})" if not uri_names(certificate) else f"not an X509-SVID: {error.rule}"
    extensions = {type(extension.value): extension.value for extension in certificate.extensions}
    constraints, names = extensions.get(x509.BasicConstraints), extensions.get(x509.SubjectAlternativeName)
    is_ca = isinstance(constraints, x509.BasicConstraints) and constraints.ca
    ips = [] if not isinstance(names, x509.SubjectAlternativeName) else names.get_values_for_type(x509.IPAddress)
    state = not_valid(certificate) or "valid now"
    rows = {
        "subject": certificate.subject.rfc4514_string(),
        "issuer": certificate.issuer.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "validity": f"{certificate.not_valid_before_utc.isoformat()} .. "
        f"{certificate.not_valid_after_utc.isoformat()} ({state})",
        "CA": "yes" if is_ca else "no",
        "SPIFFE id": spiffe_id,
        "URI SANs": ", ".join(uri_names(certificate)) or "-",
        "DNS SANs": ", ".join(dns_names(certificate)) or "-",
        "IP SANs": ", ".join(map(str, ips)) or "-",
    }
    for label, value in rows.items():
        print(f"  {label + ':':<11} {value}")
