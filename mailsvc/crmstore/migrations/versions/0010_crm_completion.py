"""per-user budget targets: a budget belongs to the company (no user) or to one user

Revision ID: 0010_crm_completion
Revises: 0008_outbound
Create Date: 2026-11-30 17:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_crm_completion"
down_revision: str | None = "0008_outbound"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COMPANY = sa.text("user_id IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("user_id", sa.Integer(), nullable=True))
        batch_op.drop_constraint("uq_budgets_year", type_="unique")
        batch_op.create_foreign_key(op.f("fk_budgets_user_id_users"), "users", ["user_id"], ["id"])
        batch_op.create_unique_constraint(op.f("uq_budgets_year_user_id"), ["year", "user_id"])
        batch_op.create_index(op.f("ix_budgets_user_id"), ["user_id"], unique=False)
        batch_op.create_index("uq_budgets_company_year", ["year"], unique=True,
                              postgresql_where=COMPANY, sqlite_where=COMPANY)


def downgrade() -> None:
    op.execute("DELETE FROM budget_months WHERE budget_id IN "
               "(SELECT id FROM budgets WHERE user_id IS NOT NULL)")
    op.execute("DELETE FROM budgets WHERE user_id IS NOT NULL")
    with op.batch_alter_table("budgets", schema=None) as batch_op:
        batch_op.drop_index("uq_budgets_company_year")
        batch_op.drop_index(op.f("ix_budgets_user_id"))
        batch_op.drop_constraint(op.f("uq_budgets_year_user_id"), type_="unique")
        batch_op.drop_constraint(op.f("fk_budgets_user_id_users"), type_="foreignkey")
        batch_op.drop_column("user_id")
        batch_op.create_unique_constraint(op.f("uq_budgets_year"), ["year"])
