"""Recording and rendering: MLflow runs, scikit-learn reports, matplotlib figures."""
