"""Full, delta and partition CRLs: building, publishing, serving."""
