"""Kinetic models: fit results and frame handling (:mod:`.base`), compartment models
(:mod:`.compartment`), graphical analyses (:mod:`.graphical`), reference-tissue models
(:mod:`.reftissue`), SUV/SUVR (:mod:`.suv`), forward models (:mod:`.forward`), regional fits and
tables (:mod:`.regional`), the one regional path the stage and ``gliaflow kinetics`` share
(:mod:`.quantify`), voxelwise maps (:mod:`.parametric`), and the model, map and metric names
(:mod:`.names`, :mod:`.metrics`)."""
