"""Billing-grade meter readings: validation, period closes, manual entries."""
