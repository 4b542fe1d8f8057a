"""Scans in, arrays out: BUSI and a site's own data, checksums, duplicates, splits, uploads, augmentations."""
