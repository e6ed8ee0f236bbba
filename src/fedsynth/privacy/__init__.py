"""Privacy and quality audits of a released generator."""

from .audit import AuditResult, diversity, memorisation_audit

__all__ = ["AuditResult", "memorisation_audit", "diversity"]
