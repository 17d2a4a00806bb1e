"""Running searches on a Slurm cluster: the batch script (:mod:`~evomerge.cluster.slurm`) and
what ``sinfo`` says about the partitions (:mod:`~evomerge.cluster.slurm_info`)."""
