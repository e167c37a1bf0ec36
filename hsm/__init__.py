"""The Signer boundary: CA keys live in a PKCS#11 token; the host hashes, the token signs."""
