"""Stores (where inputs come from and results go), the audit log, and the face gallery."""
