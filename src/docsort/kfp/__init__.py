"""Running, compiling, submitting and scheduling pipeline files."""
