"""Search spaces, Katib Experiments, the local Optuna twin and sweep results."""
