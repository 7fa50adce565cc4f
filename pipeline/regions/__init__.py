"""Regions and their curves: atlas and reference regions in T1w and PET space (:mod:`.atlas`),
regional time-activity curves (:mod:`.tacs`), partial-volume correction (:mod:`.pvc`), and the
session's TACs with and without PVC (:mod:`.measure`)."""
