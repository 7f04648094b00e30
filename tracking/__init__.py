"""Recording and rendering: MLflow runs, the results table read back from them, figures and
the report. The only package that imports mlflow."""

import logging


def quiet_logs() -> None:
    """MLflow's database messages ("Creating initial MLflow database tables...") and
    alembic's migrations off, at a first run's store creation and on every open."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
