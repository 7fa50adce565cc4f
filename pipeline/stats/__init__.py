"""Group statistics: subject tables and design matrices (:mod:`.design`), regional GLMs and
correlations (:mod:`.regional`), voxelwise permutation inference (:mod:`.voxelwise`), the group
step that writes them (:mod:`.group`), and the statistics settings checked against
participants.tsv before any work (:mod:`.checks`)."""
