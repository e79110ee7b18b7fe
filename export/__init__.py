"""Court export: verified, decrypted evidence remuxed to MP4 with a report (docs/FORMAT.md)."""
