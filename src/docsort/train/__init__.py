"""The train stage and its out-of-fold report."""
