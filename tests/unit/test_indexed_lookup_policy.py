"""``lookup: indexed`` in the data map: where it is allowed, and the DDL ``cli index-identities`` prints (ADR 0022)."""

from __future__ import annotations

import copy

import pytest
import yaml

from include.retention import cli
from include.retention.errors import PolicyError
from include.retention.policy import load_policy
from include.retention.stores.sql_index import ddl, digest_column, object_names
from tests.conftest import ROOT

DEFAULT = yaml.safe_load((ROOT / "config" / "policy.yaml").read_text())
CONTACTS = "systems.crm.collections.contacts.identities"


def _write(tmp_path, mutate) -> str:
    data = copy.deepcopy(DEFAULT)
    mutate(data)
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _colls(data, system):
    return data["systems"][system]["collections"]


def _indexed_contacts(data):
    _colls(data, "crm")["contacts"]["identities"]["email"] = {"column": "email", "lookup": "indexed"}


def _s3_indexed(data):
    _colls(data, "objects")["cvs"]["identities"] = {"email": {"column": "metadata:email", "lookup": "indexed"}}
    data["systems"]["objects"]["backups"]["restore"] = "replay"


def _two_kinds_one_column(data):
    _indexed_contacts(data)
    _colls(data, "crm")["contacts"]["identities"]["customer_ref"] = "email"


def _unknown_lookup(data):
    _colls(data, "crm")["contacts"]["identities"]["email"] = {"column": "email", "lookup": "fuzzy"}


def _digest_declared(data):
    _indexed_contacts(data)
    _colls(data, "crm")["contacts"]["columns"].append("email_ndigest")


@pytest.mark.parametrize("mutate, where, problem", [
    (_s3_indexed, "systems.objects.collections.cvs.identities.email", "'lookup: indexed' is for SQL columns"),
    (_two_kinds_one_column, f"{CONTACTS}.email", "column 'email' also holds customer_ref"),
    (_unknown_lookup, f"{CONTACTS}: email: lookup", "'scan' or 'indexed'"),
    (_digest_declared, f"{CONTACTS}.email", "email_ndigest is the product's digest column"),
])
def test_a_wrong_declaration_is_refused(tmp_path, mutate, where, problem):
    path = _write(tmp_path, mutate)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert where in str(err.value) and problem in str(err.value), str(err.value)


def test_the_declaration_loads_and_scan_stays_the_default(tmp_path):
    policy = load_policy(_write(tmp_path, _indexed_contacts))
    fields = dict(policy.systems["crm"].collections["contacts"].identity_fields())
    assert fields["email"].lookup == "indexed" and fields["phone"].lookup == "scan"


@pytest.mark.parametrize("dialect", ["postgresql", "mariadb", "sqlite"])
def test_cli_prints_the_ddl_without_connecting(tmp_path, capsys, dialect):
    path = _write(tmp_path, _indexed_contacts)
    assert cli.main(["index-identities", "--policy", path, "--dialect", dialect]) == 0
    out = capsys.readouterr().out
    names = object_names("contacts", "email")
    assert out.startswith(f"-- crm.contacts.email: lookup: indexed ({dialect})")
    statements = ddl(dialect, "contacts", "email", ["id"])
    assert out.split("\n", 1)[1] == "".join(f"{s};\n" for s in statements)
    assert digest_column("email") in out and names["index"] in out and names["update"] in out
    assert "phone" not in out  # only what is declared


def test_cli_says_when_nothing_is_declared(capsys):
    assert cli.main(["index-identities", "--policy", str(ROOT / "config" / "policy.yaml"), "--dialect",
                     "sqlite"]) == 0
    assert "no identity field declares 'lookup: indexed'" in capsys.readouterr().out


def test_validate_warns_when_only_some_fields_are_indexed(tmp_path, capsys):
    path = _write(tmp_path, _indexed_contacts)  # email indexed, phone not
    assert cli.main(["validate", path]) == 0
    err = capsys.readouterr().err
    assert f"warning: {path}: {CONTACTS}: only some fields declare 'lookup: indexed'" in err, err

    def _both(data):
        _indexed_contacts(data)
        _colls(data, "crm")["contacts"]["identities"]["phone"] = {"column": "phone", "lookup": "indexed"}

    assert cli.main(["validate", _write(tmp_path, _both)]) == 0
    assert "lookup: indexed" not in capsys.readouterr().err
