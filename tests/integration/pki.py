"""Test certificates, made fresh for each run (no key material is committed).

One CA (ECDSA P-256) signs the server certificate (CN=localhost, SAN localhost and
127.0.0.1) and client certificates: valid ones, an expired one and a revoked one (in the
CA's CRL). A second CA signs a client certificate the broker does not trust."""

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)
DAY = datetime.timedelta(days=1)


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _write_cert(path, cert):
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class Ca:
    def __init__(self, directory: Path, name: str):
        self.dir = directory
        self.name = name
        self.key = _key()
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number())
                     .not_valid_before(NOW - DAY).not_valid_after(NOW + 365 * DAY)
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                                  crl_sign=True, content_commitment=False,
                                                  key_encipherment=False, data_encipherment=False,
                                                  key_agreement=False, encipher_only=False,
                                                  decipher_only=False), critical=True)
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                    critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.pem = directory / ("%s.pem" % name)
        _write_cert(self.pem, self.cert)
        self.revoked = []

    def issue(self, cn, server=False, sans=(), not_before=None, not_after=None):
        """Writes <cn>.pem and <cn>.key; returns (cert path, key path, certificate). A server
        certificate is valid 90 days and names where its CA's CRL would be, as a deployed
        one does (testssl.sh rates a certificate without either HIGH)."""
        key = _key()
        b = (x509.CertificateBuilder()
             .subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(not_before or NOW - DAY)
             .not_valid_after(not_after or NOW + (90 if server else 10) * DAY)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        if server:
            b = b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier("http://localhost/%s.crl" % self.name)],
                relative_name=None, reasons=None, crl_issuer=None)]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.dir / ("%s.pem" % cn), self.dir / ("%s.key" % cn)
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        return cert_path, key_path, cert

    def revoke(self, cert):
        self.revoked.append(cert)

    def write_crl(self, revoked=None, path=None):
        """A CRL of the certificates revoked (or of `revoked`), written to `path` (default
        <name>.crl.pem); returns the path."""
        b = (x509.CertificateRevocationListBuilder()
             .issuer_name(self.cert.subject)
             .last_update(NOW - DAY).next_update(NOW + 10 * DAY)
             .add_extension(x509.CRLNumber(1), critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                            critical=False))
        for c in (self.revoked if revoked is None else revoked):
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                .revocation_date(NOW - DAY).build())
        crl = b.sign(self.key, hashes.SHA256())
        path = path or self.dir / ("%s.crl.pem" % self.name)
        path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        return path


class Pki:
    """Everything the TLS tests use, under one directory."""

    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca = Ca(directory, "ca")
        self.server_cert, self.server_key, _ = self.ca.issue(
            "localhost", server=True,
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        self.client = self.ca.issue("device-1")[:2]
        client2 = self.ca.issue("device-2")
        self.client2 = client2[:2]
        self.client2_cert = client2[2]
        # No CN: the identity is the first DNS name of the subject alternative names.
        key = _key()
        self.san_only = self._san_only(key)
        self.expired = self.ca.issue("device-expired", not_before=NOW - 10 * DAY,
                                     not_after=NOW - 2 * DAY)[:2]
        revoked = self.ca.issue("device-revoked")
        self.revoked = revoked[:2]
        self.ca.revoke(revoked[2])
        self.crl = self.ca.write_crl()
        self.other_ca = Ca(directory, "other-ca")
        self.unknown = self.other_ca.issue("device-unknown-ca")[:2]

    def _san_only(self, key):
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet")]))
                .issuer_name(self.ca.cert.subject)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(NOW - DAY).not_valid_after(NOW + 10 * DAY)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName("sensor-7.fleet.example")]),
                               critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.ca.key, hashes.SHA256()))
        cert_path, key_path = self.dir / "san-only.pem", self.dir / "san-only.key"
        _write_cert(cert_path, cert)
        _write_key(key_path, key)
        return cert_path, key_path
