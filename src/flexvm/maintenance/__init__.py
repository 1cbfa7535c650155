"""Rolling maintenance: hosts updated one batch (one fault domain of every set) at a time while
their guests run elsewhere. ``planning`` decides the order and checks it fits, ``rolling`` runs
it as one durable operation, ``hooks`` runs the operator's update command for a host."""
