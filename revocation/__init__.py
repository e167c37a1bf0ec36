"""Revocations: window, holds, resident-register feed, online window."""
