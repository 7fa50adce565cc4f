"""Images in space: T1w anatomy (bias correction, brain mask, tissue segmentation, template
normalization: :mod:`.anatomy`), PET frame realignment (:mod:`.motion`), PET-to-T1w registration
(:mod:`.registration`), the transform convention and its converters (:mod:`.transforms`), and
moving maps between PET, T1w and template space (:mod:`.spaces`). The toolkit that does the work
is chosen per step through :mod:`gliaflow.pipeline.engines`."""
