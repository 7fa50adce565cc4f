"""Arterial input: blood tables cleaned and the plasma input model (:mod:`.tables`), parent
fraction fitted (:mod:`.parent_fraction`), dispersion handled and the plasma input assembled on
a fine grid (:mod:`.input`), blood delay fixed or fitted (:mod:`.delay`)."""
