"""Roles for the FAB auth manager: subject-request DAGs only for the ``Privacy`` role.

FAB's default roles read (Viewer) or edit and trigger (User, Op) *every* DAG: they hold the
all-DAG permissions ``can_read`` / ``can_edit`` / ``can_delete`` on the resource ``DAGs``, and a
DAG's ``access_control`` only adds per-DAG permissions on top of those. So

1. the DAGs that carry identities (``PRIVACY_DAG_IDS``) declare ``access_control =
   PRIVACY_ACCESS_CONTROL`` (Airflow 3 format: role -> resource -> actions; ``defaults.dag_args``
   adds it by DAG id); the dag-processor
   syncs it and revokes every other non-Admin role's permission on those DAGs;
2. ``python -m include.retention.airflow.roles`` (run after ``airflow db migrate`` and before the
   dag-processor starts, again whenever it is convenient: it is idempotent) syncs FAB's default
   roles, then **removes the all-DAG permissions from Viewer, User and Op**, creates the
   ``Privacy`` role, and grants the default roles per-DAG permissions on every other DAG
   (``OTHER_DAG_IDS`` plus any DAG already parsed): Viewer reads, User and Op read / edit / delete;
3. ``AIRFLOW__FAB__UPDATE_FAB_PERMS=False`` on every Airflow process: otherwise each start of
   the api-server (and every ``airflow users ...`` command) re-adds the default roles' built-in
   permissions, all-DAG ones included (FAB's ``bulk_sync_roles`` only ever adds).

Audit logs (``/api/v2/eventLogs``, where a REST trigger's conf lands) stay Admin-only, as in FAB's
defaults. Admin keeps everything. The simple auth manager has no per-DAG permissions at all: any
``user`` or ``op`` can trigger any DAG and any ``viewer`` reads every run's conf (README, "Roles").

Importing this module imports nothing from Airflow (DAG files get ``PRIVACY_ACCESS_CONTROL`` via
``defaults.dag_args``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRIVACY_ROLE = "Privacy"
PRIVACY_DAG_IDS = ("erasure_request", "erasure_intake", "access_request", "erasure_metadata_purge",
                   "erasure_run_purge")
OTHER_DAG_IDS = ("retention_sweep", "erasure_deadlines")
DEFAULT_ROLES = ("Viewer", "User", "Op")
ROLES_WITH_PAGE_ACTIONS = (PRIVACY_ROLE, "Admin")  # verify the ledger, submit requests on /retention/

DAGS, DAG_RUNS = "DAGs", "DAG Runs"
PRIVACY_ACCESS_CONTROL: dict[str, dict[str, set[str]]] = {
    PRIVACY_ROLE: {DAGS: {"can_read", "can_edit", "can_delete"},
                   DAG_RUNS: {"can_read", "can_create", "can_delete", "menu_access"}},
}
_ALL_DAG_ACTIONS = ("can_read", "can_edit", "can_delete")
_PER_DAG = {"Viewer": ("can_read",), "User": _ALL_DAG_ACTIONS, "Op": _ALL_DAG_ACTIONS, PRIVACY_ROLE: ("can_read",)}
# The Privacy role: what a Viewer sees besides DAGs, plus running and clearing the DAGs it is given.
_PRIVACY_EXTRA = (("can_create", "DAG Runs"), ("can_edit", "DAG Runs"), ("can_delete", "DAG Runs"),
                  ("can_create", "Task Instances"), ("can_edit", "Task Instances"),
                  ("can_delete", "Task Instances"), ("can_edit", "HITL Detail"))


def _dag_resource(dag_id: str) -> str:
    return f"DAG:{dag_id}"


def apply(sm, dag_ids: list[str] | None = None) -> dict[str, list[str]]:
    """Bring the roles to the state described in the module docstring; returns what each role may do on DAGs."""
    from airflow.models.dag import DagModel
    from sqlalchemy import select

    sm.sync_roles()  # FAB's defaults first (creates the roles on a fresh DB): then take away
    viewer = sm.find_role("Viewer")
    privacy = sm.find_role(PRIVACY_ROLE) or sm.add_role(PRIVACY_ROLE)
    for action, resource in {(p.action.name, p.resource.name) for p in viewer.permissions} | set(_PRIVACY_EXTRA):
        if resource == DAGS and action in _ALL_DAG_ACTIONS:
            continue
        perm = sm.create_permission(action, resource)
        if perm is not None:
            sm.add_permission_to_role(privacy, perm)
    for name in (*DEFAULT_ROLES, PRIVACY_ROLE):
        role = sm.find_role(name)
        for action in _ALL_DAG_ACTIONS:
            perm = sm.get_permission(action, DAGS)
            if perm is not None and perm in role.permissions:
                sm.remove_permission_from_role(role, perm)
    parsed = set(sm.session.scalars(select(DagModel.dag_id)))
    others = sorted((set(OTHER_DAG_IDS) | parsed | set(dag_ids or ())) - set(PRIVACY_DAG_IDS))
    for dag_id in others:
        for name, actions in _PER_DAG.items():
            role = sm.find_role(name)
            for action in actions:
                sm.add_permission_to_role(role, sm.create_permission(action, _dag_resource(dag_id)))
    sm.session.commit()
    summary = {}
    for name in (*DEFAULT_ROLES, PRIVACY_ROLE):
        role = sm.find_role(name)
        summary[name] = sorted(f"{p.action.name} {p.resource.name}" for p in role.permissions
                               if p.resource.name == DAGS or p.resource.name.startswith("DAG:"))
    return summary


def create_users(sm, users: list[dict[str, str]]) -> list[str]:
    """Users as ``{"username", "role", "password"}``; an existing user keeps its password, gets the role."""
    made = []
    for u in users:
        role = sm.find_role(u["role"])
        if role is None:
            raise SystemExit(f"error: role {u['role']!r} does not exist")
        user = sm.find_user(username=u["username"])
        if user is None:
            user = sm.add_user(u["username"], u["username"], "retention", f"{u['username']}@example.invalid",
                               role, u["password"])
            if not user:
                raise SystemExit(f"error: could not create user {u['username']!r} (see the log above)")
            made.append(u["username"])
        elif role not in user.roles:
            user.roles = [role]
            sm.update_user(user)
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m include.retention.airflow.roles",
                                     description="Lock the subject-request DAGs to the Privacy role (FAB).")
    parser.add_argument("--users-file", type=Path,
                        help='JSON list of {"username", "role", "password"} to create (then deleted by you)')
    parser.add_argument("--dag-id", dest="dag_ids", action="append", default=[],
                        help="another non-privacy DAG the default roles may use (repeatable)")
    args = parser.parse_args(argv)

    from airflow.configuration import conf

    if "FabAuthManager" not in conf.get("core", "auth_manager"):
        print("error: [core] auth_manager is not the FAB auth manager; nothing to do", file=sys.stderr)
        return 2
    from airflow.providers.fab.auth_manager.cli_commands.utils import get_application_builder

    with get_application_builder() as appbuilder:
        appbuilder.add_permissions(update_perms=True)
        summary = apply(appbuilder.sm, args.dag_ids)
        made = create_users(appbuilder.sm, json.loads(args.users_file.read_text())) if args.users_file else []
    print(json.dumps({"dag_permissions": summary, "users_created": made}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
