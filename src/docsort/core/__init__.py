"""Shared foundations: errors, atomic writes, storage (local + S3), probability tables, stats, device, config, output guards."""
