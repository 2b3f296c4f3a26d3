"""Tests, the local Pigment stand-in and synthetic audit events for pigment_audit_assets."""
