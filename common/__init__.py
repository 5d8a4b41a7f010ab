"""Shared building blocks of the generative MONAI bundles (referenced from bundle configs as ``common.<module>``)."""
