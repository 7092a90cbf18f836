"""Trunk, batched branches, the seed-style reference loop, and the backbone table."""
from antimetric.model.backbones import BACKBONES, SHARE_TYPES
from antimetric.model.convert import batched_to_reference, reference_to_batched
from antimetric.model.ensemble import EnsembleNet, build_model

__all__ = ["BACKBONES", "SHARE_TYPES", "EnsembleNet", "batched_to_reference", "build_model", "reference_to_batched"]
