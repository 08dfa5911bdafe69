"""Reading finished runs: a checkpoint's description (`info`) and loss-curve images (`plot`)."""
