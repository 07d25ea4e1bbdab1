"""crm defaults: a lead and a deal pipeline with stages, an activity plan, loss reasons, ticket
types and priorities, so a fresh install is usable (editable data, see crmstore/defaults.py)

Revision ID: 0006_crm_defaults
Revises: 0005_crm_rules
Create Date: 2026-11-30 13:00:00
"""

from collections.abc import Sequence

from alembic import op

from mailsvc.crmstore.defaults import seed_defaults

revision: str = "0006_crm_defaults"
down_revision: str | None = "0005_crm_rules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only kinds that are still empty: an install that configured its own keeps them.
    seed_defaults(op.get_bind())


def downgrade() -> None:
    # The rows are ordinary data by now (edited, referenced by opportunities): they stay.
    pass
