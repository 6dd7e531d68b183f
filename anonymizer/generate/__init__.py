"""Generate: pose-conditioned face generation (issue 5), in the spirit of DeepPrivacy.

- `align`: the 5 detector landmarks → a canonical crop (similarity transform) and back; the face region in
  crop space; landmark heatmaps (the sparse pose the generator is conditioned on).
- `pose`: yaw / pitch / roll from the 5 landmarks (cv2.solvePnP on a generic 3-D face).
- `networks`: a U-Net generator (context + mask + heatmaps + latent → face) and a conditional discriminator.
- `data`: LFW split by identity, aligned and cached outside the repository.
- `train`: the Ray Train loop (hinge loss, R1, EMA, DiffAugment) and the export of fp16 weights + model card.
- `anonymizer`: `GeneratedFace`, the Anonymizer that uses the weights, with policy-driven classical fallbacks.

Importing this package does not import torch; the submodules that need it do.
"""
