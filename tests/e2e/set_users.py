"""Known passwords for the e2e stack's users: ``python -m tests.e2e.set_users USERS.json``.

airflow-init (docker-compose.yaml) creates ``admin``, ``privacy`` and ``dpo`` with random passwords,
as an operator would then do with ``airflow users reset-password``, this sets the test's passwords,
and creates the other users of the file (``user``, ``op``) with ``roles.create_users``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from include.retention.airflow.roles import create_users


def main(argv: list[str]) -> int:
    users = json.loads(Path(argv[0]).read_text())
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        sm = appbuilder.sm
        create_users(sm, users)
        for u in users:
            user = sm.find_user(username=u["username"])
            sm.reset_password(user.id, u["password"])
    print(f"users: {', '.join(u['username'] for u in users)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
