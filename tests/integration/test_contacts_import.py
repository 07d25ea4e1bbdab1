"""``mailsvc import-contacts``: accounts and contacts from CSV, duplicates detected, not created."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sqlalchemy import func, select
from typer.testing import CliRunner

from mailsvc.bootstrap import open_services
from mailsvc.config import Settings
from mailsvc.contacts_import import import_contacts
from mailsvc.crmstore import services as crm
from mailsvc.crmstore.models import Account, Contact

CSV = """Firma;Vorname;Nachname;E-Mail;Telefon;Ort;Tags;Unbekannt
Acme GmbH;Carla;Customer;carla@acme.example;+49 1;Berlin;vip|beta;x
ACME gmbh.;Dora;Dev;dora@acme.example;;Berlin;;x
Globex Ltd;Gordon;Buyer;GORDON@globex.example;;London;;x
;Solo;Person;solo@gmail.com;;;;x
Initech;;;;;;;x
Known AG;Kim;Known;kim@known.example;;;;x
"""


async def test_import_detects_duplicates_against_data_and_within_the_file(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with open_services(settings, migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            known = await crm.create_account(session, "Known AG", ["known.example"])
            await crm.create_contact(session, "Buyer", "gordon@globex.example",
                                     first_name="Gordon")
        report = await import_contacts(settings, CSV)
        assert report.rows == 6
        assert report.contacts_created == 4  # Carla, Dora, Solo, Kim
        assert report.accounts_created == 2  # Acme, Globex
        assert report.accounts_matched == 2  # "ACME gmbh." and Known AG
        dups = {(d.row, d.kind) for d in report.duplicates}
        assert dups == {(3, "account"), (4, "contact")}
        assert report.skipped == [(6, "no last name and no e-mail address")]
        assert report.unmapped == ["Unbekannt"]
        async with svc.sessions() as session:
            assert await session.scalar(select(func.count()).select_from(Account)) == 3
            carla = await session.scalar(select(Contact).where(Contact.last_name == "Customer"))
            assert carla is not None and sorted(t.name for t in carla.tags) == ["beta", "vip"]
            kim = await session.scalar(select(Contact).where(Contact.last_name == "Known"))
            assert kim is not None and kim.account_id == known.id
            solo = await session.scalar(select(Contact).where(Contact.last_name == "Person"))
            assert solo is not None and solo.account_id is None
        again = await import_contacts(settings, CSV)
        assert again.contacts_created == 0 and again.accounts_created == 0
        assert len([d for d in again.duplicates if d.kind == "contact"]) == 5


async def test_dry_run_saves_nothing(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    report = await import_contacts(settings, CSV, dry_run=True)
    assert report.contacts_created == 5
    async with open_services(settings, migrate=False) as svc, svc.sessions() as session:
        assert await session.scalar(select(func.count()).select_from(Contact)) == 0


def test_cli_prints_a_summary(tmp_path: Path, sqlite_url: str, monkeypatch: object) -> None:
    from mailsvc.cli import app

    path = tmp_path / "contacts.csv"
    path.write_text("company,first_name,last_name,email\nAcme,Carla,Customer,c@acme.example\n")
    env = {"MAILSVC_DATABASE_URL": sqlite_url}
    result = CliRunner().invoke(app, ["import-contacts", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "contacts created" in result.output and "1" in result.output
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n")
    result = CliRunner().invoke(app, ["import-contacts", str(bad)], env=env)
    assert result.exit_code == 65
    result = CliRunner().invoke(app, ["import-contacts", str(tmp_path / "missing.csv")], env=env)
    assert result.exit_code == 66


BLANKS = """company,first_name,last_name,email,owner

Acme,Carla,Customer,carla@acme.example,ann@corp.example

,Nobody,,,
Beta,Ben,Buyer,ben@beta.example,ghost@corp.example
,Gus,Again,CARLA@acme.example,
"""


async def test_rows_keep_their_numbers_after_blank_rows_and_unknown_owners_are_reported(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    async with open_services(settings, migrate=False) as svc:
        async with svc.sessions() as session, session.begin():
            ann = await crm.create_user(session, "ann@corp.example", "Ann")
        report = await import_contacts(settings, BLANKS)
        # Row 1 is the header; rows 2 and 4 are blank but still rows of the sheet.
        assert report.rows == 4
        assert report.skipped == [(5, "no last name and no e-mail address")]
        assert report.warnings == [(6, "owner ghost@corp.example is not a user: imported "
                                       "without owner")]
        carla_id = next(d.existing_id for d in report.duplicates if d.kind == "contact")
        assert [(d.row, d.kind) for d in report.duplicates] == [(7, "contact")]
        assert report.contacts_created == 2
        async with svc.sessions() as session:
            ben = await session.scalar(select(Contact).where(Contact.last_name == "Buyer"))
            assert ben is not None and ben.owner_id is None
            carla = await session.get(Contact, carla_id)
            assert carla is not None and carla.owner_id == ann.id
        forced = await import_contacts(settings, BLANKS, allow_duplicates=True)
        assert forced.contacts_created == 3  # every person again, each reported as duplicate
        assert {d.row for d in forced.duplicates if d.kind == "contact"} == {3, 6, 7}
