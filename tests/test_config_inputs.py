"""The files a config names for lb to read: found in every field marked InputFile, part of
the digest (a change to one alone is a new config), and polled by the watcher."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import lb_yaml
from cryptography.hazmat.primitives.asymmetric import ec
from edge_helpers import routes
from jwt.algorithms import ECAlgorithm

from lb.config import load
from lb.config.watch import signature


def jwk(kid: str) -> dict[str, object]:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return {**ECAlgorithm.to_jwk(public, as_dict=True), "kid": kid, "alg": "ES256"}


def write_config(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    files = {name: tmp_path / name for name in ("users", "keys.json", "secret", "ca.pem")}
    files["users"].write_text(
        "alice:$2y$05$abcdefghijklmnopqrstuu5hQ0TOjG4T3rBRDb6cZq3Iy6jVCqu1S\n"
    )
    files["keys.json"].write_text(json.dumps({"keys": [jwk("one")]}))
    files["secret"].write_text("a shared secret of at least 32 bytes")
    files["ca.pem"].write_text("")
    text = lb_yaml(
        ["127.0.0.1:1"], port=1, admin_port=2,
        extra_service=f'    tls: {{ca: "{files["ca.pem"]}"}}\n',
        routes=routes(
            ("a", "/a", f'basic_auth: {{htpasswd: "{files["users"]}"}}'),
            ("b", "/b", f'jwt: {{jwks_file: "{files["keys.json"]}"}}'),
            ("c", "/c", f'jwt: {{secret_file: "{files["secret"]}", algorithms: [HS256]}}'),
            ("d", "/", f'basic_auth: {{htpasswd: "{files["users"]}"}}'),
        ),
    )  # fmt: skip
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return path, files


def test_every_marked_field_is_an_input_once(tmp_path: Path) -> None:
    path, files = write_config(tmp_path)
    loaded = load(str(path))
    assert sorted(loaded.inputs) == sorted(str(f) for f in files.values())


def test_a_changed_input_is_a_new_digest_and_signature(tmp_path: Path) -> None:
    path, files = write_config(tmp_path)
    first = load(str(path))
    before = signature(str(path), first.inputs)
    assert load(str(path)).digest == first.digest  # nothing changed: the same config
    files["keys.json"].write_text(json.dumps({"keys": [jwk("one"), jwk("two")]}))  # rotated
    second = load(str(path))
    assert second.digest != first.digest
    assert signature(str(path), first.inputs) != before
