"""Certificates for the TLS tests, made with openssl: a CA, a server certificate for
127.0.0.1 and localhost, and a client certificate (its key encrypted when asked)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def make_certificates(d: Path, key_password: str | None = None, ca: str = "ca") -> None:
    """``{ca}.pem``/``.key``, ``server.crt``/``.key`` and ``client.crt``/``.key`` in
    ``d``, all PEM; the client's key AES-encrypted with ``key_password`` if given."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out",
            f"{ca}.pem", "-days", "2", "-subj", f"/CN=shadowline-test-{ca}", cwd=d)  # fmt: skip
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
            cwd=d)  # fmt: skip
    encrypt = ["-aes256", "-pass", f"pass:{key_password}"] if key_password else []
    openssl("genpkey", "-algorithm", "RSA", "-out", "client.key", *encrypt, cwd=d)
    passin = ["-passin", f"pass:{key_password}"] if key_password else []
    openssl("req", "-new", "-key", "client.key", *passin, "-out", "client.csr",
            "-subj", "/CN=shadowline-client", cwd=d)  # fmt: skip
    openssl("x509", "-req", "-in", "client.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", "client.crt", "-days", "2", "-extfile", "client.ext",
            cwd=d)  # fmt: skip
