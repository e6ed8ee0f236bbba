"""Privacy and quality audits of a released generator."""

from .audit import AuditResult, VolumeAuditResult, diversity, memorisation_audit, volume_memorisation_audit

__all__ = ["AuditResult", "memorisation_audit", "diversity", "VolumeAuditResult", "volume_memorisation_audit"]
