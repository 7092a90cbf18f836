"""Trunk, batched branches, the seed-style reference loop, the backbone table, and the device plan."""
from antimetric.model.backbones import BACKBONES
from antimetric.model.convert import batched_to_reference, reference_to_batched
from antimetric.model.device_plan import DevicePlan, plan_for
from antimetric.model.ensemble import EnsembleNet, build_model
from antimetric.model.settings import SHARE_TYPES

__all__ = ["BACKBONES", "SHARE_TYPES", "DevicePlan", "EnsembleNet", "batched_to_reference", "build_model", "plan_for",
           "reference_to_batched"]
