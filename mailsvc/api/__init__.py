"""The REST API (FastAPI) over the CRM store, with health and metrics."""
