"""htpasswd files: reading them (config validation and compile) and checking one password.

Supported: bcrypt (`$2y$`, `$2a$`, `$2b$`: `htpasswd -B`) and SHA-crypt (`$5$`, `$6$`:
`htpasswd -2`, `-5`). Apache's default MD5 (`$apr1$`), crypt(3), SHA-1 and plain text are
refused when the config loads: they are too cheap to brute-force from a leaked file.
"""

import bcrypt
from passlib.hash import sha256_crypt, sha512_crypt

BCRYPT = ("$2y$", "$2a$", "$2b$")
SHA_CRYPT = ("$5$", "$6$")
# Checked when the user is unknown, so that an unknown name costs as long as a wrong password
# and answers do not tell which names exist. A bcrypt hash of random bytes, cost 5 as
# `htpasswd -B` writes by default.
DUMMY = "$2b$05$yItUaPi1CvbXDB8bdTV45ebSsEg4fvUdVJd7lafy2rAqisJSZ05im"
_BCRYPT_MAX = 72  # bcrypt reads no further (and bcrypt>=5 raises beyond it); Apache truncates


def parse(text: str, path: str) -> tuple[dict[bytes, str], list[str]]:
    """The users and their hashes, and the problems as "path:line: message"."""
    users: dict[bytes, str] = {}
    problems: list[str] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        if not sep or not user or not hashed:
            problems.append(f"{path}:{n}: expected user:hash")
        elif not hashed.startswith(BCRYPT + SHA_CRYPT):
            scheme = hashed.split("$")[1] if hashed.startswith("$") else "crypt/plain"
            problems.append(
                f'{path}:{n}: user "{user}": unsupported hash ({scheme}); '
                "write it with htpasswd -B (bcrypt) or -2/-5 (SHA-crypt)"
            )
        elif user.encode() in users:
            problems.append(f'{path}:{n}: user "{user}" is listed twice')
        else:
            users[user.encode()] = hashed
    return users, problems


def read(path: str) -> tuple[dict[bytes, str], list[str]]:
    """`parse` of the file at `path`; an unreadable file is one problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [f"{path}: cannot read the htpasswd file: {exc}"]
    return parse(text, path)


def verify(password: bytes, hashed: str) -> bool:
    """Slow on purpose (bcrypt, thousands of SHA rounds): run it off the event loop."""
    try:
        if hashed.startswith(BCRYPT):
            return bcrypt.checkpw(password[:_BCRYPT_MAX], hashed.encode())
        scheme = sha256_crypt if hashed.startswith("$5$") else sha512_crypt
        return bool(scheme.verify(password, hashed))
    except ValueError:  # a malformed hash: no password matches it
        return False
