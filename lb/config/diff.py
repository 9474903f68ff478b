"""`lb check --diff`: what a new config would change against the running lb.

The running config comes from the admin API (`GET /api/config`), so the answer reflects
what is live, including edits made since the file was last read.
"""

import json
import urllib.error
import urllib.request
from typing import Any

from .load import Loaded


def as_plain(config: Any) -> dict[str, Any]:
    """The config as the admin API serves it (JSON types, secrets redacted), so both sides of
    the comparison have the same shape."""
    from ..admin.app import config_report

    return json.loads(json.dumps(config_report(config), default=list))


def diff(running: dict[str, Any], new: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    old_routes = {r["name"]: r for r in running.get("routes", [])}
    new_routes = {r["name"]: r for r in new.get("routes", [])}
    old_services = running.get("services", {})
    new_services = new.get("services", {})
    for kind, old, cur in (
        ("route", old_routes, new_routes),
        ("service", old_services, new_services),
    ):
        for name in sorted(cur.keys() - old.keys()):
            lines.append(f"+ {kind} {name}")
        for name in sorted(old.keys() - cur.keys()):
            lines.append(f"- {kind} {name}")
        for name in sorted(cur.keys() & old.keys()):
            changed = _changed_fields(old[name], cur[name])
            if changed:
                lines.append(f"~ {kind} {name}: {', '.join(changed)}")
    for key in sorted((running.keys() | new.keys()) - {"routes", "services"}):
        if running.get(key) != new.get(key):
            lines.append(f"~ {key}")
    return lines


def _changed_fields(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
                out += [f"{key}.{sub}" for sub in _changed_fields(a[key], b[key])]
            else:
                out.append(key)
    return out


def diff_against_running(loaded: Loaded, admin_url: str | None) -> int:
    admin = loaded.config.admin
    url = admin_url or f"http://{admin.bind[0]}:{admin.bind[1]}"
    req = urllib.request.Request(url.rstrip("/") + "/api/config")
    if admin.token:
        req.add_header("Authorization", f"Bearer {admin.token}")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            running = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"cannot read the running config from {url}: {exc}")
        return 1
    lines = diff(running, as_plain(loaded.config))
    print("\n".join(lines) if lines else "no changes against the running lb")
    return 0
