"""Issuance of residents' signing and user-authentication certificates."""
