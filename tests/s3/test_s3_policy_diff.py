"""The record diff on S3 (moto's server): objects due under an S3 rule, and the CVs a deleted applicant row owns,
compared object by object; a renamed rule adds nothing, a held object is not counted, nothing is changed."""

from __future__ import annotations

import datetime as dt
import json
import shutil

import sqlalchemy as sa
from dateutil.relativedelta import relativedelta

from include.retention.connections import ConnInfo
from include.retention.demo import seed
from include.retention.demo.s3_seed import seed_demo_objects
from include.retention.ledger import Ledger, RunRef
from include.retention.policy import parse_policy
from include.retention.policy_diff import diff_records
from include.retention.runtime import Runtime
from include.retention.stores.sql import SqlStore, make_engine
from include.retention.sweep import run_rule
from tests.integration.test_default_ends import NOW as DEMO_NOW
from tests.integration.test_default_ends import POLICY, ROOT
from tests.policy_text import policy_text, sql_system, system
from tests.s3.conftest import KEY, NOW, PLAIN, put, snapshot

OBJECTS = """\
access_logs:
  bucket: {bucket}
  prefix: logs/
  key_template: "logs/{{yyyy}}/{{mm}}/{{dd}}/..."
  rules:
    - name: {name}
      start: {{basis: key_date}}
      stages:
        - {{action: anonymize, after: P30D, mask: {{ip: {{strategy: truncate_ip}}}}}}
        - {{action: delete, after: {delete}}}
cvs:
  bucket: {bucket}
  prefix: cvs/
  legal_hold: [{{column: legal-hold, equals: "true"}}]
  rules: [{{name: stale, start: {{basis: tag, name: uploaded}}, action: delete, period: P12M}}]
"""
CRM = """\
applicants:
  table: p_applicants
  primary_key: id
  columns: [id, closed_at]
  references: [{{to: objects.cvs, key_template: "cvs/{{id}}/"}}]
  rules:
    - {{name: {name}, start: closed_at, action: delete, period: {period}}}
"""


def policy(log_rule: str, delete: str, crm_rule: str, period: str):
    text = policy_text(system("objects", "s3", "objects_s3", OBJECTS.format(bucket=PLAIN, name=log_rule,
                                                                           delete=delete)),
                       sql_system("crm", "crm_db", CRM.format(name=crm_rule, period=period)),
                       defaults="{max_fraction: 1.0}")
    return parse_policy(text, source="test-policy.yaml")


def ago(**kw) -> dt.datetime:
    return (NOW - relativedelta(**kw)).replace(tzinfo=None)


def test_objects_due_and_owned_objects_are_compared_object_by_object(s3, make_store, tmp_path):
    # logs by key date (NOW is 2026-06-15): the old map anonymizes after 30 days and deletes after 12 months,
    # the new one deletes after 6 months (and renames the rule)
    for day in ("2025/05/01", "2025/06/20", "2025/10/01", "2025/12/20", "2026/05/20", "2026/06/10"):
        put(s3, PLAIN, f"logs/{day}/access.log", b"203.0.113.7 GET /")
    # CVs owned by applicant rows; 4's is under legal hold, cvs/10/ only looks like 1's
    for key in ("cvs/1/cv.pdf", "cvs/2/cv.pdf", "cvs/3/cv.pdf", "cvs/5/cv.pdf", "cvs/6/cv.pdf", "cvs/10/cv.pdf"):
        put(s3, PLAIN, key)
    put(s3, PLAIN, "cvs/2/cover.pdf", Tagging="uploaded=2025-01-01")  # stale under both maps' same CV rule
    put(s3, PLAIN, "cvs/4/cv.pdf", Tagging="legal-hold=true")
    engine = make_engine(f"sqlite:///{tmp_path / 'crm.db'}")
    md = sa.MetaData()
    t = sa.Table("p_applicants", md, sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
                 sa.Column("closed_at", sa.DateTime))
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(t.insert(), [{"id": 1, "closed_at": ago(months=2)}, {"id": 2, "closed_at": ago(days=10)},
                                  {"id": 3, "closed_at": ago(months=2)}, {"id": 4, "closed_at": ago(days=10)},
                                  {"id": 5, "closed_at": None}, {"id": 6, "closed_at": ago(months=7)},
                                  {"id": 10, "closed_at": None}])
    old = policy("server_logs", "P12M", "recruitment_closed", "P6M")
    new = policy("logs", "P6M", "closed", "P6D")
    stores = {}
    for side, p in (("old", old), ("new", new)):
        stores[side] = {"objects": make_store(p), "crm": SqlStore("crm", p, make_engine(str(engine.url)), mask_key=KEY)}
    before = snapshot(s3, PLAIN)

    diff = diff_records(old, new, stores["old"].__getitem__, stores["new"].__getitem__, NOW)

    assert snapshot(s3, PLAIN) == before  # listings and reads only
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}
    # by hand: now, the old map deletes the 2025-05-01 log and anonymizes 06-20, 10-01, 12-20; the new one deletes
    # 05-01, 06-20, 10-01 and anonymizes 12-20. At 30 days (07-15): old deletes 05-01, 06-20, anonymizes 10-01,
    # 12-20, 05-20, 06-10; new deletes 05-01, 06-20, 10-01, 12-20 and anonymizes 05-20, 06-10.
    # Applicants: old deletes 6 (both horizons), new 1, 2, 3, 4 and 6 (5 and 10 are open); their CVs go with
    # them: 1's one (not cvs/10/, which only starts like it), 2's CV (its cover goes under both maps' same CV rule),
    # 3's one; 4's is held, 6's goes under both.
    assert got == {
        ("anonymize", 0, "objects.access_logs"): (0, 2), ("anonymize", 30, "objects.access_logs"): (0, 2),
        ("delete", 0, "crm.applicants"): (4, 0), ("delete", 0, "objects.access_logs"): (2, 0),
        ("delete", 0, "objects.cvs"): (3, 0),
        ("delete", 30, "crm.applicants"): (4, 0), ("delete", 30, "objects.access_logs"): (2, 0),
        ("delete", 30, "objects.cvs"): (3, 0)}
    assert diff["newly_affected"] == [{"horizon": 0, "records": 9}, {"horizon": 30, "records": 9}]
    assert diff["errors"] == []
    assert "cvs/" not in json.dumps(diff) and "logs/2" not in json.dumps(diff)  # no object key in the report
    for side in stores.values():
        side["crm"].close()
    engine.dispose()


# ---- the default data map on the demo data ----------------------------------------------------------------------

def test_default_map_on_the_demo_a_shorter_engagement_period_against_the_sweeps(s3, conn_info, tmp_path):
    """config/policy.yaml on the demo data (CRM and mailing list in SQLite, objects in moto) with the mailing list's
    no-engagement period cut from 36 to 24 months: the newly deleted subscribers, list memberships and campaign
    events are exactly what the two maps' real sweeps of the mailing list delete (run on copies), and nothing else
    differs or fails (computed starts, orphan rules, owned CVs and attachments, S3 logs)."""
    crm, mailing = tmp_path / "crm.db", tmp_path / "mailing.db"
    crm_engine = make_engine(f"sqlite:///{crm}")
    seed.seed_crm(crm_engine, DEMO_NOW)
    seed.seed_mailing(make_engine(f"sqlite:///{mailing}"), DEMO_NOW)
    seed_demo_objects(conn_info, crm_engine, DEMO_NOW)
    crm_engine.dispose()
    text = (ROOT / "config" / "policy.yaml").read_text()
    assert text.count("period: P36M") >= 1 and "            period: P36M\n\n      list_memberships:" in text
    shorter = parse_policy(text.replace("            period: P36M\n\n      list_memberships:",
                                        "            period: P24M\n\n      list_memberships:"), source="new.yaml")

    def runtime(policy, mailing_path):
        conns = {"crm_db": ConnInfo("sqlite", host=str(crm)), "mailing_db": ConnInfo("sqlite", host=str(mailing_path)),
                 "objects_s3": conn_info}
        return Runtime(policy, conns.__getitem__, key=KEY)

    old_rt, new_rt = runtime(POLICY, mailing), runtime(shorter, mailing)
    diff = diff_records(POLICY, shorter, old_rt.store, new_rt.store, DEMO_NOW)
    for rt in (old_rt, new_rt):
        rt.close()
    got = {(r["action"], r["horizon"], r["collection"]): (r["newly"], r["no_longer"]) for r in diff["collections"]}

    want = {}
    tables = ("subscribers", "list_memberships", "campaign_events")
    for h in (0, 30):
        gone = []
        for side, policy in (("old", POLICY), ("new", shorter)):
            copy = tmp_path / f"mailing-{side}-{h}.db"
            shutil.copy(mailing, copy)
            engine = make_engine(f"sqlite:///{copy}")
            before = {t: set(_ids(engine, t)) for t in tables}
            store = SqlStore("mailing", policy, engine, mask_key=KEY)
            ledger = Ledger(make_engine(f"sqlite:///{tmp_path / 'ledger.db'}"), KEY)
            for rid in policy.rule_ids(["mailing"]):
                if policy.rule(rid)[2].stages[-1].action == "delete":
                    run_rule(policy, rid, store, ledger, RunRef("t", rid), now=DEMO_NOW + dt.timedelta(days=h))
            gone.append({t: before[t] - set(_ids(engine, t)) for t in tables})
            store.close()
        for t in tables:
            pair = (len(gone[1][t] - gone[0][t]), len(gone[0][t] - gone[1][t]))
            if any(pair):
                want[("delete", h, f"mailing.{t}")] = pair
    assert want[("delete", 0, "mailing.subscribers")][0] > 0 and want[("delete", 0, "mailing.list_memberships")][0] > 0
    assert diff["errors"] == [] and got == want


def _ids(engine, table: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(f"SELECT id FROM {table}")).scalars())
