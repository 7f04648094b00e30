"""Recording and rendering: MLflow runs, the results table read back from them, figures and
the report. The only package that imports mlflow."""

import logging
import os

# before mlflow is first imported, by any module of the package
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def quiet_logs() -> None:
    """MLflow's database messages ("Creating initial MLflow database tables...") and
    alembic's migrations off, at a first run's store creation and on every open; and the two
    "View run ... at: http://..." lines MLflow prints for every run a server ends (a user who
    sets the variable to false gets them back)."""
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its SQL, logged as an ERROR just before the exception that tailbench reports in a line
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
