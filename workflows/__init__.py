"""The job workflow and the pure graph logic it uses. Deterministic: no I/O here."""
