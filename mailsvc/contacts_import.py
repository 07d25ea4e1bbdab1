"""``mailsvc import-contacts FILE.csv``: accounts and contacts from CSV, duplicates reported.

Column mapping (header names, case-insensitive; English or German):

| field      | accepted headers                                  |
|------------|---------------------------------------------------|
| company    | company, account, organisation, organization, firma |
| domain     | domain, website, web, homepage                     |
| first_name | first_name, firstname, first name, vorname         |
| last_name  | last_name, lastname, last name, surname, nachname, name |
| email      | email, e-mail, mail, e_mail                        |
| phone      | phone, telephone, tel, telefon                     |
| role       | role, position, job title, funktion                |
| street     | street, address, strasse, straße                   |
| zip        | zip, postcode, postal code, plz                    |
| city       | city, town, ort, stadt                             |
| country    | country, land                                      |
| industry   | industry, branche                                  |
| size       | size, employees, größe                             |
| tags       | tags (separated by ``;`` or ``|``)                 |
| owner      | owner, owner email, verantwortlich (a user's e-mail) |

A row needs a last name or an e-mail address. Its company becomes an account unless an account
with the same normalised name (legal form and punctuation ignored) or the mail domain exists; a
person becomes a contact unless a contact with the address (or the same name at the same
company) exists. Duplicates are reported, never created. The file is imported in one
transaction: all rows or none.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from mailsvc.bootstrap import open_services
from mailsvc.config import Settings
from mailsvc.crmstore import services
from mailsvc.crmstore.services.common import email_domain
from mailsvc.freemail import is_freemail

logger = logging.getLogger(__name__)

COLUMNS: dict[str, tuple[str, ...]] = {
    "company": ("company", "account", "organisation", "organization", "firma"),
    "domain": ("domain", "website", "web", "homepage"),
    "first_name": ("first_name", "firstname", "first name", "vorname"),
    "last_name": ("last_name", "lastname", "last name", "surname", "nachname", "name"),
    "email": ("email", "e-mail", "mail", "e_mail"),
    "phone": ("phone", "telephone", "tel", "telefon"),
    "role": ("role", "position", "job title", "funktion"),
    "street": ("street", "address", "strasse", "straße"),
    "zip": ("zip", "postcode", "postal code", "plz"),
    "city": ("city", "town", "ort", "stadt"),
    "country": ("country", "land"),
    "industry": ("industry", "branche"),
    "size": ("size", "employees", "größe"),
    "tags": ("tags",),
    "owner": ("owner", "owner email", "verantwortlich"),
}


@dataclass(frozen=True, slots=True)
class Duplicate:
    row: int
    kind: str  # "account" or "contact"
    existing_id: int
    detail: str


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    accounts_created: int = 0
    accounts_matched: int = 0
    contacts_created: int = 0
    duplicates: list[Duplicate] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    # Rows imported with something left out (e.g. an owner who is not a user).
    warnings: list[tuple[int, str]] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)


class ImportFileError(ValueError):
    """The file cannot be read as a CSV with a header the mapping understands."""


def _normalise_header(name: str) -> str:
    return " ".join(name.strip().lower().replace("_", " ").split())


def map_header(header: list[str]) -> tuple[dict[str, int], list[str]]:
    """CSV column index per field, and the header names that map to nothing."""
    lookup = {_normalise_header(alias): name for name, aliases in COLUMNS.items()
              for alias in aliases}
    mapping: dict[str, int] = {}
    unmapped: list[str] = []
    for index, column in enumerate(header):
        name = lookup.get(_normalise_header(column))
        if name is None or name in mapping:
            unmapped.append(column)
        else:
            mapping[name] = index
    if "last_name" not in mapping and "email" not in mapping:
        raise ImportFileError("the header has neither a last-name nor an e-mail column "
                              f"(found: {', '.join(header)})")
    return mapping, unmapped


def read_rows(text: str) -> tuple[dict[str, int], list[str], list[tuple[int, list[str]]]]:
    """The header mapping, unmapped header names, and the non-blank rows with their row number
    as a spreadsheet shows it (the header is row 1; blank rows still count)."""
    sample = text[:4096]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, ",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    try:
        header = next(reader)
    except StopIteration:
        raise ImportFileError("the file is empty") from None
    mapping, unmapped = map_header(header)
    rows = [(index + 2, row) for index, row in enumerate(reader)]
    return mapping, unmapped, [(n, row) for n, row in rows if any(c.strip() for c in row)]


def _value(row: list[str], mapping: dict[str, int], name: str) -> str | None:
    index = mapping.get(name)
    if index is None or index >= len(row):
        return None
    return row[index].strip() or None


async def import_row(
    session: AsyncSession, number: int, row: list[str], mapping: dict[str, int],
    report: ImportReport, default_owner: int | None, allow_duplicates: bool = False,
) -> None:
    def get(name: str) -> str | None:
        return _value(row, mapping, name)

    email, last_name = get("email"), get("last_name")
    if not last_name and not email:
        report.skipped.append((number, "no last name and no e-mail address"))
        return
    owner_id = default_owner
    if get("owner"):
        owner = await services.find_user(session, get("owner") or "")
        if owner is None:
            # The person matters more than the owner column: import it without, and say so.
            report.warnings.append((number, f"owner {get('owner')} is not a user: imported "
                                            "without owner"))
            owner_id = None
        else:
            owner_id = owner.id
    account_id: int | None = None
    company, domain = get("company"), get("domain")
    if domain:
        domain = domain.lower().removeprefix("https://").removeprefix("http://")
        domain = domain.removeprefix("www.").split("/")[0]
    if domain and is_freemail(domain):
        domain = None  # a freemail domain never names a company
    mail_domain = email_domain(email)
    if not domain and mail_domain and not is_freemail(mail_domain):
        domain = mail_domain if company else None
    if company or domain:
        existing = await services.find_account_duplicate(session, company, domain)
        if existing is not None:
            account_id = existing.id
            report.accounts_matched += 1
            if company and existing.name != company:
                report.duplicates.append(Duplicate(
                    number, "account", existing.id,
                    f"{company!r} matches existing account {existing.name!r}"))
        elif company:
            fields: dict[str, Any] = {k: get(k) for k in ("street", "zip", "city", "country",
                                                          "industry", "size")}
            account = await services.create_account(
                session, company, [domain] if domain else [], owner_id=owner_id, **fields)
            account_id = account.id
            report.accounts_created += 1
    existing_contact = await services.find_contact_duplicate(
        session, email, get("first_name"), last_name, account_id)
    if existing_contact is not None:
        report.duplicates.append(Duplicate(
            number, "contact", existing_contact.id,
            f"{email or last_name} exists already as contact {existing_contact.id}"
            + ("; created anyway (--allow-duplicates)" if allow_duplicates else "")))
        if not allow_duplicates:
            return
    tags = [t.strip() for t in (get("tags") or "").replace("|", ";").split(";") if t.strip()]
    await services.create_contact(
        session, last_name or (email or "").split("@")[0], email, first_name=get("first_name"),
        account_id=account_id, owner_id=owner_id, phone=get("phone"), role=get("role"),
        tags=tags, allow_duplicate=allow_duplicates,
    )
    report.contacts_created += 1


def read_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("cp1252")  # spreadsheets saved on Windows


async def import_contacts(
    settings: Settings, text: str, *, name: str = "contacts.csv", dry_run: bool = False,
    owner_email: str | None = None, console: Console | None = None,
    allow_duplicates: bool = False,
) -> ImportReport:
    """Import the CSV text in one transaction (rolled back with ``dry_run``)."""
    mapping, unmapped, rows = read_rows(text)
    report = ImportReport(rows=len(rows), unmapped=unmapped)
    console = console or Console(stderr=True)
    async with open_services(settings) as svc, svc.sessions() as session:
        transaction = await session.begin()
        default_owner = None
        if owner_email:
            owner = await services.find_user(session, owner_email)
            if owner is None:
                raise ImportFileError(f"--owner {owner_email} is not a user")
            default_owner = owner.id
        with _progress(console) as progress:
            task = progress.add_task(f"importing {name}", total=len(rows))
            for number, row in rows:
                await import_row(session, number, row, mapping, report, default_owner,
                                 allow_duplicates)
                progress.advance(task)
        if dry_run:
            await transaction.rollback()
        else:
            await transaction.commit()
    logger.info("imported %s: %s contacts, %s accounts created, %s duplicates", name,
                report.contacts_created, report.accounts_created, len(report.duplicates))
    return report


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


def summary_tables(report: ImportReport, dry_run: bool) -> list[Table]:
    summary = Table(title="import-contacts" + (" (dry run: nothing saved)" if dry_run else ""))
    summary.add_column("what")
    summary.add_column("count", justify="right")
    for label, count in (
        ("rows read", report.rows), ("contacts created", report.contacts_created),
        ("accounts created", report.accounts_created),
        ("existing accounts used", report.accounts_matched),
        ("duplicates (not created)", len(report.duplicates)),
        ("rows skipped", len(report.skipped)),
        ("rows with warnings", len(report.warnings)),
    ):
        summary.add_row(label, str(count))
    tables = [summary]
    if report.duplicates or report.skipped or report.warnings:
        details = Table(title="duplicates and skipped rows")
        for column in ("row", "kind", "existing id", "detail"):
            details.add_column(column)
        for dup in report.duplicates[:50]:
            details.add_row(str(dup.row), dup.kind, str(dup.existing_id), dup.detail)
        for row, reason in report.skipped[:50]:
            details.add_row(str(row), "skipped", "", reason)
        for row, reason in report.warnings[:50]:
            details.add_row(str(row), "warning", "", reason)
        tables.append(details)
    return tables
