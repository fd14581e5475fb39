"""NFQUEUE hand-off to Suricata or the built-in inspector engine (inspection issue)."""
