"""The trained generator as an operator: a face drawn in the same pose and context, never from the face's pixels.

`operator` (GeneratedFace, registered as "generated"), `align` (5 landmarks → the canonical crop and back),
`networks` (the generator), `harmonize` (the photo's light and colour), `guard` (a recognizer vets each draw).
Its training code lives outside the library, in training/.
"""
