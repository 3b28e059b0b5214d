"""Hard cases, the candidate comparison, the error report and the submission file."""
