"""Write a ``.env`` with fresh random secrets for the compose stack (``make secrets``); never overwrite one.

``docker compose`` reads ``.env`` beside ``docker-compose.yaml``; every secret there is required
(``${VAR:?...}``), so the stack does not start without this file. Standard library only: it runs
before any virtualenv exists. Usage: ``python3 scripts/make_secrets.py [--env-file PATH]``.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# os.urandom, as the standard library's ``secrets`` uses (this file's name shadows that module here).


def _hex() -> str:
    return os.urandom(32).hex()


def _password() -> str:
    # URL-safe (A-Z a-z 0-9 _ -): goes into connection URIs and JSON unquoted, and has no '$' for compose
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def _fernet_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# name -> (what it is, how a fresh value is made). docker-compose.yaml requires exactly these.
SECRETS: dict[str, tuple[str, Callable[[], str]]] = {
    "RETENTION_HMAC_KEYS": ("keys for keyed digests and registry encryption, 'kid:secret,...', current first "
                            "(docs/adr/0007-key-rotation.md)", lambda: f"k1:{_hex()}"),
    "AIRFLOW_FERNET_KEY": ("Airflow's key for connections and variables in its metadata DB", _fernet_key),
    "AIRFLOW_JWT_SECRET": ("Airflow's secret for signing API tokens", _hex),
    "AIRFLOW_DB_PASSWORD": ("password of Airflow's metadata database (user airflow)", _password),
    "LEDGER_DB_PASSWORD": ("password of the ledger and registry database (user ledger)", _password),
    "CRM_DB_PASSWORD": ("password of the CRM database (user crm)", _password),
    "MAILING_DB_PASSWORD": ("password of the mailing-list database (user mailing)", _password),
    "MAILING_ROOT_PASSWORD": ("root password of the mailing-list MariaDB", _password),
    "MINIO_ROOT_PASSWORD": ("MinIO's root password (user minio), also the S3 secret key of objects_s3", _password),
}


def render() -> str:
    lines = ["# Secrets of the compose stack, written by `make secrets` (scripts/make_secrets.py).",
             "# Keep this file out of version control and back it up with the databases: without",
             "# RETENTION_HMAC_KEYS the registry cannot be decrypted and the ledger cannot be verified."]
    for name, (what, make) in SECRETS.items():
        lines += [f"# {what}", f"{name}={make()}"]
    return "\n".join(lines) + "\n"


def write_env(path: Path) -> bool:
    """Create ``path`` (mode 0600) with fresh values; False (nothing written) when it exists."""
    text = render()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    args = parser.parse_args(argv)
    if write_env(args.env_file):
        print(f"{args.env_file}: written with fresh secrets ({', '.join(SECRETS)})")
    else:
        print(f"{args.env_file}: exists, left unchanged (delete it first to make new secrets; the old ones "
              "are needed to read the registry and verify the ledger)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
