"""Group statistics: subject tables and design matrices (:mod:`.design`), regional GLMs and
correlations (:mod:`.regional`), voxelwise permutation inference (:mod:`.voxelwise`), and the
group step that writes them (:mod:`.group`)."""
