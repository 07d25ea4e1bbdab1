"""Inline forward blocks as Outlook, Gmail, Apple Mail and Thunderbird write them (de, en)."""

ORIGINAL_FROM = "Gordon Buyer <gordon@globex.example>"

FORWARD_BODIES: dict[str, tuple[str, str]] = {
    # name: (style, body of the forwarding mail)
    "outlook_en": ("outlook", """FYI, see below.

________________________________
From: Gordon Buyer <gordon@globex.example>
Sent: Monday, March 4, 2024 10:12 AM
To: Anna Seller <anna@ours.example>
Cc: Purchasing <purchasing@globex.example>
Subject: Pricing for 50 seats

Hi Anna, what would 50 seats cost?
"""),
    "outlook_de": ("outlook", """Zur Info.

Von: Buyer, Gordon <gordon@globex.example>
Gesendet: Montag, 4. März 2024 10:12
An: Seller, Anna <anna@ours.example>
Betreff: Preise für 50 Lizenzen

Hallo Anna, was kosten 50 Lizenzen?
"""),
    "outlook_de_ursprünglich": ("outlook", """siehe unten

-----Ursprüngliche Nachricht-----
Von: Gordon Buyer [mailto:gordon@globex.example]
Gesendet: Montag, 4. März 2024 10:12
An: anna@ours.example
Betreff: Preise

Hallo!
"""),
    "gmail_en": ("gmail", """Please add this.

---------- Forwarded message ---------
From: Gordon Buyer <gordon@globex.example>
Date: Mon, Mar 4, 2024 at 10:12 AM
Subject: Pricing for 50 seats
To: <anna@ours.example>


Hi Anna, what would 50 seats cost?
"""),
    "gmail_de": ("gmail", """Bitte ablegen.

---------- Weitergeleitete Nachricht ---------
Von: Gordon Buyer <gordon@globex.example>
Date: Mo., 4. März 2024 um 10:12 Uhr
Subject: Preise für 50 Lizenzen
To: <anna@ours.example>


Hallo Anna, was kosten 50 Lizenzen?
"""),
    "apple_en": ("apple", """Sent to the CRM.

Begin forwarded message:

From: Gordon Buyer <gordon@globex.example>
Subject: Pricing for 50 seats
Date: 4 March 2024 at 10:12:00 CET
To: Anna Seller <anna@ours.example>

Hi Anna, what would 50 seats cost?
"""),
    "apple_de": ("apple", """Ablage.

Anfang der weitergeleiteten Nachricht:

Von: Gordon Buyer <gordon@globex.example>
Betreff: Preise für 50 Lizenzen
Datum: 4. März 2024 um 10:12:00 MEZ
An: Anna Seller <anna@ours.example>

Hallo Anna, was kosten 50 Lizenzen?
"""),
    "thunderbird_en": ("thunderbird", """For the record.

-------- Forwarded Message --------
Subject: Pricing for 50 seats
Date: Mon, 4 Mar 2024 10:12:00 +0100
From: Gordon Buyer <gordon@globex.example>
To: Anna Seller <anna@ours.example>

Hi Anna, what would 50 seats cost?
"""),
    "thunderbird_de": ("thunderbird", """Zur Ablage.

-------- Weitergeleitete Nachricht --------
Betreff: Preise für 50 Lizenzen
Datum: Mon, 4 Mar 2024 10:12:00 +0100
Von: Gordon Buyer <gordon@globex.example>
An: Anna Seller <anna@ours.example>

Hallo Anna, was kosten 50 Lizenzen?
"""),
    "thunderbird_original": ("thunderbird", """See below.

-------- Original Message --------
Subject: Pricing for 50 seats
Date: Mon, 4 Mar 2024 10:12:00 +0100
From: Gordon Buyer <gordon@globex.example>
To: anna@ours.example

Hi Anna, what would 50 seats cost?
"""),
}
