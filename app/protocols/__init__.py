"""Standard inference protocols, each a thin adapter onto the same engine (registry,
batch queues, limits, metrics): Open Inference Protocol v2 REST (`oip_rest`), the wire
format of its tensors (`tensors`)."""
