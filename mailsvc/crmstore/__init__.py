"""The compact CRM store: models, business rules, queries and reports."""
