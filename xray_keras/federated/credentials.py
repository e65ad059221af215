"""Keys and certificates for a federation: one folder per party, each holding only what that party needs.

Written by `python -m xray_keras.federated.provision` and by the deployment runtime:

  <out>/ca/          ca.crt, ca.key         the federation's certificate authority: keep ca.key offline
                                            (a run of the deployment runtime never writes ca.key)
  <out>/superlink/   ca.crt, server.crt, server.key, site_<k>.pub (the sites' public keys, to register)
  <out>/site_<k>/    ca.crt, site.key, site.pub   site k's own key pair, and the CA that vouches for the SuperLink

TLS: the SuperLink presents server.crt (signed by the CA, naming --server_name and --server_ips);
each SuperNode trusts only ca.crt. Authentication: each site signs its requests with site.key
(EC P-384, OpenSSH format, as Flower's SuperNode reads it) and the SuperLink, started with
--enable-supernode-auth, admits only the public keys registered with `flwr supernode register`.
Private keys are written with mode 0600; nobody's private key is copied into another's folder.
"""

import datetime
import ipaddress
import os

from xray_keras.errors import UserError

CA, SUPERLINK = "ca", "superlink"
DAYS = 365


def site_folder(k):
  return f"site_{k}"


def _write(path, data, private):
  """Writes `data` to a new file; private keys get mode 0600 from the start, not after."""
  fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
  with os.fdopen(fd, "wb") as f:
    f.write(data)


def _name(common_name):
  from cryptography import x509
  from cryptography.x509.oid import NameOID

  return x509.Name(
    [
      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "xray_keras federation"),
      x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ]
  )


def _certificate(subject, key, issuer, issuer_key, days, extensions):
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes

  now = datetime.datetime.now(datetime.UTC)
  builder = (
    x509.CertificateBuilder()
    .subject_name(subject)
    .issuer_name(issuer)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(minutes=5))
    .not_valid_after(now + datetime.timedelta(days=days))
  )
  for extension, critical in extensions:
    builder = builder.add_extension(extension, critical=critical)
  return builder.sign(issuer_key, hashes.SHA384())


def provision(out, sites, server_names=("localhost",), server_ips=("127.0.0.1",), days=DAYS, keep_ca_key=True):
  """Writes the federation's folders under `out` (which must not exist yet); returns `{party: folder}`.

  The SuperLink's certificate always names 127.0.0.1 too: its Fleet gateway reaches it there.
  Without `keep_ca_key` (a one-run federation) the CA's private key signs and is never written.
  """
  from cryptography import x509
  from cryptography.hazmat.primitives import serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID

  if sites < 1:
    raise UserError("--sites must be at least 1.")
  if os.path.exists(out):
    raise UserError(f"{out} exists: provisioning never overwrites keys; choose a new --out.")
  try:
    ips = [ipaddress.ip_address(ip) for ip in server_ips]
    ips += [] if ipaddress.ip_address("127.0.0.1") in ips else [ipaddress.ip_address("127.0.0.1")]
  except ValueError as e:
    raise UserError(f"--server_ips: {e}") from None
  pem = serialization.Encoding.PEM
  folders = {party: os.path.join(out, party) for party in (CA, SUPERLINK, *map(site_folder, range(sites)))}
  for folder in folders.values():
    os.makedirs(folder, mode=0o700)

  def private_pem(key):
    return key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())

  ca_key = ec.generate_private_key(ec.SECP384R1())
  ca_name = _name("xray_keras federation CA")
  ca_cert = _certificate(
    ca_name,
    ca_key,
    ca_name,
    ca_key,
    days,
    [
      (x509.BasicConstraints(ca=True, path_length=0), True),
      (x509.KeyUsage(False, False, False, False, False, True, True, False, False), True),
    ],
  )
  ca_pem = ca_cert.public_bytes(pem)
  if keep_ca_key:
    _write(os.path.join(folders[CA], "ca.key"), private_pem(ca_key), private=True)
  server_key = ec.generate_private_key(ec.SECP384R1())
  alt_names = [x509.DNSName(n) for n in server_names] + [x509.IPAddress(ip) for ip in ips]
  server_cert = _certificate(
    _name(server_names[0] if server_names else str(ips[0])),
    server_key,
    ca_name,
    ca_key,
    days,
    [
      (x509.BasicConstraints(ca=False, path_length=None), True),
      (x509.SubjectAlternativeName(alt_names), False),
      (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ],
  )
  _write(os.path.join(folders[SUPERLINK], "server.key"), private_pem(server_key), private=True)
  _write(os.path.join(folders[SUPERLINK], "server.crt"), server_cert.public_bytes(pem), private=False)
  for party in (CA, SUPERLINK):
    _write(os.path.join(folders[party], "ca.crt"), ca_pem, private=False)
  for k in range(sites):
    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    private = key.private_bytes(pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    folder = folders[site_folder(k)]
    _write(os.path.join(folder, "site.key"), private, private=True)
    _write(os.path.join(folder, "site.pub"), public + b"\n", private=False)
    _write(os.path.join(folder, "ca.crt"), ca_pem, private=False)
    _write(os.path.join(folders[SUPERLINK], f"{site_folder(k)}.pub"), public + b"\n", private=False)
  return folders
