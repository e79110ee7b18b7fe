"""``bodycam ca``: the agency's certificate authority (init, issue, revoke).

``ca init DIR`` makes the agency root and the provisioning intermediate (``--pq``: and the
ML-DSA-65 hierarchy that certifies hybrid keys); ``ca issue ROLE NAME --pub FILE`` certifies a
device, dock, vendor or export key and writes its chain (both chains for a hybrid key);
``ca revoke CERT`` puts a certificate on its issuer's CRL. Exit 0 done, 1 refused, 2 usage.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from secure_store.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    ca = subparsers.add_parser("ca", help="agency certificate authority: init, issue, revoke")
    sub = ca.add_subparsers(dest="ca_command", metavar="ACTION")
    init = sub.add_parser("init", help="make the agency root and provisioning certificates in DIR")
    init.add_argument("dir", type=Path)
    init.add_argument("--org", required=True, help="the agency's name, as certificates will say it")
    init.add_argument("--pq", action="store_true",
                      help="also an ML-DSA-65 hierarchy, to certify hybrid (post-quantum) keys; on an "
                           "existing CA, adds just that")
    init.set_defaults(func=cmd_init)
    issue = sub.add_parser("issue", help="certify a public key: device|dock|vendor|export NAME")
    issue.add_argument("role", help="device, dock, vendor or export")
    issue.add_argument("name", help="the device ID (device), or the holder's name")
    issue.add_argument("--pub", type=Path, required=True, help="the public key (PEM) to certify: Ed25519, or a hybrid "
                                                              "Ed25519 + ML-DSA-65 key file (two blocks)")
    issue.add_argument("--ca", type=Path, required=True, metavar="DIR", help="the CA directory")
    issue.add_argument("--out", type=Path, required=True, help="where to write the chain (PEM, leaf first)")
    issue.set_defaults(func=cmd_issue)
    revoke = sub.add_parser("revoke", help="revoke a certificate (its issuer's CRL is re-signed)")
    revoke.add_argument("cert", type=Path)
    revoke.add_argument("--ca", type=Path, required=True, metavar="DIR")
    revoke.set_defaults(func=cmd_revoke)
    ca.set_defaults(func=lambda args: _usage(ca))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_usage()
    return 2


def cmd_init(args: argparse.Namespace) -> int:
    from secure_store import pki

    root, inter = pki.CertificateAuthority(args.dir).init(args.org, pq=args.pq)
    if args.pq:
        print(f"agency roots (Ed25519 {pki.cert_fingerprint(root)[:16]} + ML-DSA-65) in {args.dir}/"
              f"{pki.TRUST_ROOTS} (give it to courts; move root.key and root-mldsa65.key offline); "
              f"provisioning certificates in provisioning.pem and provisioning-mldsa65.pem")
        return 0
    print(f"agency root {pki.cert_fingerprint(root)} in {args.dir}/root.pem (give it to courts; move root.key "
          f"offline); provisioning certificate {pki.cert_fingerprint(inter)[:16]}")
    return 0


def cmd_issue(args: argparse.Namespace) -> int:
    from secure_store import keys, pki
    from secure_store.durable import write_atomic

    if args.role not in pki.ROLES:
        raise UsageError(f"unknown role {args.role!r} (expected one of {', '.join(pki.ROLES)})")
    if not (args.ca / "root.pem").is_file():
        raise UsageError(f"{args.ca} is not a CA directory (no root.pem); run `bodycam ca init` first")
    try:
        public = keys.load_verify_key(args.pub, "device")  # any Ed25519 key, or a hybrid one
    except keys.KeyFileError as exc:
        raise UsageError(f"--pub wants an Ed25519 (or hybrid Ed25519 + ML-DSA-65) public key: {exc}") from None
    if args.out.exists():
        raise UsageError(f"{args.out} already exists; refusing to overwrite it")
    chain = pki.CertificateAuthority(args.ca).issue(args.role, args.name, public)
    write_atomic(args.out, pki.chain_pem(chain), 0o644, overwrite=False)
    kind = " and its ML-DSA-65 companion certificate" if public.hybrid else ""
    print(f"{args.role} certificate{kind} for {args.name!r} (key {keys.fingerprint(public)[:16]}) "
          f"written to {args.out}")
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    from secure_store import pki

    if not args.cert.is_file():
        raise UsageError(f"{args.cert}: no such certificate file")
    cert = pki.read_certs(args.cert)[0]
    crl = pki.CertificateAuthority(args.ca).revoke(cert)
    print(f"revoked {pki.common_name(cert)!r} (serial {cert.serial_number:x}); publish {crl} to docks and verifiers")
    return 0
