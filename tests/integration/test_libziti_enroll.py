"""Interop: the real OpenZiti C SDK (openziti==0.6.0 / libziti 0.29.3) enrolls and logs in.

libziti runs in a child process with a timeout: a protocol mistake can hang or crash it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography import x509

from tests.support import libziti
from tests.support.controller import init_network, serve_process
from tunneler.cli import main as cli
from tunneler.controller import pki

pytest.importorskip("openziti")
pytestmark = pytest.mark.interop
ROOT = Path(__file__).resolve().parents[2]



def test_libziti_enrolls_and_loads_services(tmp_path: Path) -> None:
    net = init_network(tmp_path / "net", ROOT / "policies" / "llm.yaml")
    token = tmp_path / "laptop.jwt"
    assert cli(["network", "enroll-token", str(net), "laptop", "-o", str(token)]) == 0
    identity_file = tmp_path / "laptop.json"
    with serve_process(net):
        enrolled = libziti.run(libziti.ENROLL, str(token), str(identity_file), cwd=tmp_path)
        assert enrolled.returncode == 0, enrolled.stderr
        identity = json.loads(identity_file.read_text())
        assert identity["ztAPI"].startswith("https://localhost:")
        cert = x509.load_pem_x509_certificate(identity["id"]["cert"].encode())
        cert.verify_directly_issued_by(pki.load_cert(net / "pki" / "ca.pem"))
        reused = libziti.run(libziti.ENROLL, str(token), str(tmp_path / "again.json"), cwd=tmp_path)
        assert reused.returncode != 0 and "already used" in reused.stderr
        loaded = libziti.run(libziti.LOAD, str(identity_file), cwd=tmp_path)
        assert loaded.returncode == 0, loaded.stderr
        assert "loaded True" in loaded.stdout
