"""Digital phantom cohort with known truth (:mod:`.cohort`), its anatomy (:mod:`.anatomy`) and
its blood and frame timing (:mod:`.blood`)."""
