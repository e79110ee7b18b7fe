"""Sealed evidence: streaming encryption, signed manifests, hash chain, audit log."""
