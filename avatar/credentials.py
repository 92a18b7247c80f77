"""Content Credentials (C2PA) for the files twincast writes: a signed manifest inside the
file saying which tool made it, from which avatar bundle (name and mark id) and that it is
synthetic (IPTC's ``trainedAlgorithmicMedia``), so any C2PA reader (Adobe's Verify, the
CAI tools, ``c2patool``, ``twincast verify``) shows it.

The signature is the operator's. ``SigningConfig.cert``/``key`` name a certificate chain
(PEM, the signing certificate first) and its private key, as a certificate authority on
the C2PA trust list issues them; without them twincast makes an operator key of its own
on first use (a private CA and a signing certificate, under ``keys_dir``): the manifest is
then intact and readable, and readers say its signer is not on a trust list.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from avatar.errors import TwincastError
from avatar.version import __version__

log = logging.getLogger(__name__)

SYNTHETIC = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ASSERTION = "org.twincast.avatar"
MIME = {".mp4": "video/mp4", ".m4a": "audio/mp4", ".mov": "video/quicktime",
        ".wav": "audio/wav"}
ALGS = ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519")
UNTRUSTED = "signingCredential.untrusted"


@dataclass(frozen=True)
class SigningConfig:
    enabled: bool = True
    cert: Path | None = None
    """PEM certificate chain, signing certificate first (with ``key``)."""
    key: Path | None = None
    """PEM private key of the signing certificate."""
    alg: str = "es256"
    tsa_url: str | None = None
    """An RFC 3161 time-stamp authority, so the signature outlives the certificate."""
    keys_dir: Path | None = None
    """Where twincast keeps the operator key it makes (default: $TWINCAST_KEYS, else
    $XDG_DATA_HOME/twincast/c2pa, else ~/.local/share/twincast/c2pa)."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise TwincastError("--sign-cert and --sign-key go together: give both, or "
                                "neither to use twincast's own operator key")
        if self.alg not in ALGS:
            raise TwincastError(f"signing algorithm {self.alg!r}: use one of "
                                f"{', '.join(ALGS)}")


def _keys_dir(cfg: SigningConfig) -> Path:
    if cfg.keys_dir is not None:
        return cfg.keys_dir
    if os.environ.get("TWINCAST_KEYS"):
        return Path(os.environ["TWINCAST_KEYS"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "twincast" / "c2pa"


def make_operator_key(folder: Path, days: int = 3650) -> tuple[Path, Path]:
    """A private CA and an ES256 signing certificate it issued (C2PA wants the signer's
    certificate to be a leaf with digital-signature use and a protection EKU, not a
    self-signed root). Returns (chain.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    from avatar import atomic

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twincast operator")])

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, encipher_only=False, decipher_only=False)
    ca = (x509.CertificateBuilder().subject_name(name("twincast operator CA"))
          .issuer_name(name("twincast operator CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True,
                                       crl_sign=True, **usage), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(name(f"twincast on {os.uname().nodename}"))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                         crl_sign=False, **usage), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    chain, secret = folder / "chain.pem", folder / "key.pem"
    with atomic.atomic_path(secret) as tmp:
        tmp.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    os.chmod(secret, 0o600)
    with atomic.atomic_path(chain) as tmp:
        tmp.write_bytes(leaf.public_bytes(serialization.Encoding.PEM)
                        + ca.public_bytes(serialization.Encoding.PEM))
    return chain, secret


class Signer:
    """The operator's signer, checked when made (so a bad key fails before any render)."""

    def __init__(self, cfg: SigningConfig = SigningConfig()):
        import c2pa

        self.cfg = cfg
        if cfg.cert is not None and cfg.key is not None:
            chain_path, key_path = cfg.cert, cfg.key
        else:
            folder = _keys_dir(cfg)
            chain_path, key_path = folder / "chain.pem", folder / "key.pem"
            if not (chain_path.is_file() and key_path.is_file()):
                make_operator_key(folder)
                log.info("made an operator signing key for Content Credentials in %s (a "
                         "private CA: readers will say its signer is not on a trust list; "
                         "see README, 'Provenance', for a real one)", folder)
        try:
            chain, key = chain_path.read_bytes(), key_path.read_bytes()
        except OSError as e:
            raise TwincastError(f"{e.filename}: cannot be read ({e.strerror})") from None
        info = c2pa.C2paSignerInfo(alg=cfg.alg.encode(), sign_cert=chain, private_key=key,
                                   ta_url=cfg.tsa_url.encode() if cfg.tsa_url else None)
        try:
            self._signer = c2pa.Signer.from_info(info)
        except c2pa.C2paError as e:
            raise TwincastError(f"{chain_path}, {key_path}: not a usable signing certificate "
                                f"and key for {cfg.alg} ({e})") from None

    def sign(self, path: Path, facts: dict) -> None:
        """Embed a signed manifest in ``path`` (rewritten in place, atomically)."""
        import c2pa

        from avatar import atomic

        mime = MIME.get(path.suffix.lower())
        if mime is None:
            log.warning("%s: Content Credentials are written into %s files only; this one "
                        "has none", path, ", ".join(MIME))
            return
        manifest = {
            "claim_generator_info": [{"name": "twincast", "version": __version__}],
            "title": path.name,
            "assertions": [
                {"label": "c2pa.actions", "data": {"actions": [{
                    "action": "c2pa.created", "digitalSourceType": SYNTHETIC,
                    "softwareAgent": {"name": "twincast", "version": __version__}}]}},
                {"label": ASSERTION, "data": {"synthetic": True, **facts}},
            ]}
        builder = c2pa.Builder(manifest)
        try:
            with atomic.atomic_path(path, path.suffix) as tmp, open(path, "rb") as src, \
                    open(tmp, "w+b") as dst:
                builder.sign(self._signer, mime, src, dst)
        except c2pa.C2paError as e:
            raise TwincastError(f"{path}: Content Credentials could not be signed ({e})") \
                from None


def read_credentials(path: Path) -> dict | None:
    """What a file's C2PA manifest says, or None when it has none. A manifest that does not
    check out is reported (``valid`` False, with the reader's reasons), never raised."""
    import c2pa

    if Path(path).suffix.lower() not in MIME:
        return None
    try:
        reader = c2pa.Reader(str(path))
    except c2pa.C2paError as e:
        text = str(e)
        if "ManifestNotFound" in text or "no JUMBF" in text.lower() or "not found" in \
                text.lower():
            return None
        return {"valid": False, "problems": [text.splitlines()[0][:200]]}
    try:
        report = json.loads(reader.json())
    finally:
        reader.close()
    active = report.get("manifests", {}).get(report.get("active_manifest", ""), {})
    problems = [s.get("code", "?") for s in report.get("validation_status", [])]
    ours = next((a["data"] for a in active.get("assertions", [])
                 if a.get("label") == ASSERTION), {})
    actions = [a for x in active.get("assertions", []) if x.get("label", "").startswith(
        "c2pa.actions") for a in x.get("data", {}).get("actions", [])]
    signed = active.get("signature_info", {})
    return {"valid": all(p == UNTRUSTED for p in problems),
            "trusted": UNTRUSTED not in problems and not problems,
            "problems": problems,
            "synthetic": any(a.get("digitalSourceType") == SYNTHETIC for a in actions),
            "generator": ", ".join(g.get("name", "?") for g in
                                   active.get("claim_generator_info", [])),
            "signed_by": signed.get("common_name"), "issuer": signed.get("issuer"),
            "avatar": ours}
