"""The composition root: the CLI, the runner, the workers and `make perf`. The only code that
imports both `studies` (Optuna) and `tracking` (MLflow); the core (the rest of `benchmark`)
imports neither, and `studies` and `tracking` import only the core (checked by the
import-linter contracts in pyproject.toml, run by `make lint`)."""
