"""Input and output at the edge: BIDS-PET discovery and validation (:mod:`.bids`), pydantic
models of the BIDS metadata files (:mod:`.metadata`), unit conversion (:mod:`.units`), BIDS
derivatives naming and atomic writers (:mod:`.derivatives`), and the embedded template and
atlases (:mod:`.resources`)."""
