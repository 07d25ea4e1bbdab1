"""The page's words in English and German; the language comes from a cookie, else
Accept-Language."""

from __future__ import annotations

LANGUAGES = ("en", "de")

MESSAGES: dict[str, dict[str, str]] = {
    "en": {
        "title": "mailsvc triage", "inbox": "Inbox", "leads": "Inbox leads", "tickets": "Tickets",
        "quarantine": "Quarantine", "health": "Health", "sign_in": "Sign in",
        "sign_out": "Sign out", "api_key": "API key", "wrong_key": "That key is not valid.",
        "needs_attention": "Needs attention", "all_mail": "All mail", "role": "Role",
        "owner": "Owner", "any": "any", "from_date": "From", "to_date": "To",
        "search": "Search sender, subject, Message-ID", "filter": "Filter",
        "received": "Received", "sender": "Sender", "subject": "Subject",
        "outcome": "Outcome", "rule": "Rule", "direction": "Direction", "links": "Links",
        "no_mail": "No mail matches.", "headers": "Headers", "text": "Text",
        "quoted": "Quoted text", "attachments": "Attachments", "decision": "Decision",
        "notes": "Notes", "rules_tried": "Rules tried", "raw": "Download the raw message",
        "link_to": "Link to", "record_id": "Record (type to search)", "link": "Link",
        "unlink": "Unlink", "create_contact": "Create a contact from the sender",
        "convert": "Convert to opportunity", "retry": "Retry", "drop": "Drop",
        "drop_confirm": "Delete this mail for good?",
        "reason": "Reason", "backlog": "Intake backlog", "outbox": "Events waiting",
        "mailboxes": "Mailboxes", "status": "Status", "count": "Count", "done": "Done.",
        "previous": "Previous", "next": "Next", "language": "Deutsch", "mail": "Mail",
        "email": "E-mail", "name": "Name", "created": "Created",
    },
    "de": {
        "title": "mailsvc Triage", "inbox": "Posteingang", "leads": "Inbox-Leads",
        "tickets": "Tickets", "quarantine": "Quarantäne", "health": "Zustand",
        "sign_in": "Anmelden", "sign_out": "Abmelden", "api_key": "API-Schlüssel",
        "wrong_key": "Dieser Schlüssel ist ungültig.", "needs_attention": "Zu prüfen",
        "all_mail": "Alle Mails", "role": "Rolle", "owner": "Besitzer", "any": "alle",
        "from_date": "Von", "to_date": "Bis", "search": "Absender, Betreff, Message-ID suchen",
        "filter": "Filtern", "received": "Eingang", "sender": "Absender", "subject": "Betreff",
        "outcome": "Ergebnis", "rule": "Regel", "direction": "Richtung", "links": "Verknüpfungen",
        "no_mail": "Keine passende Mail.", "headers": "Kopfzeilen", "text": "Text",
        "quoted": "Zitierter Text", "attachments": "Anhänge", "decision": "Entscheidung",
        "notes": "Hinweise", "rules_tried": "Geprüfte Regeln",
        "raw": "Originalnachricht herunterladen", "link_to": "Verknüpfen mit",
        "record_id": "Datensatz (tippen zum Suchen)", "link": "Verknüpfen",
        "unlink": "Lösen", "create_contact": "Kontakt aus dem Absender anlegen",
        "convert": "In Verkaufschance umwandeln", "retry": "Erneut versuchen",
        "drop": "Verwerfen", "drop_confirm": "Diese Mail endgültig löschen?",
        "reason": "Grund", "backlog": "Eingangsrückstand",
        "outbox": "Wartende Ereignisse", "mailboxes": "Postfächer", "status": "Status",
        "count": "Anzahl", "done": "Erledigt.", "previous": "Zurück", "next": "Weiter",
        "language": "English", "mail": "Mail", "email": "E-Mail", "name": "Name",
        "created": "Angelegt",
    },
}


def pick_language(cookie: str | None, accept_language: str | None) -> str:
    if cookie in LANGUAGES:
        return cookie
    for part in (accept_language or "").split(","):
        code = part.split(";")[0].strip().lower()[:2]
        if code in LANGUAGES:
            return code
    return "en"


def other(language: str) -> str:
    return "de" if language == "en" else "en"
