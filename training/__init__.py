"""Training of the `generated` operator's network: LFW data preparation, the Ray Train loop, the export of
weights with a model card, and entry points. The library never imports this package."""
