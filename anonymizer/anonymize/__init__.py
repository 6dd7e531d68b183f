"""Anonymize: operators that replace each face region, chosen by name from the policy (see base.py).

Importing this package registers the classical operators; the generator registers lazily, so torch and its
weights load only when a policy names it.
"""

from anonymizer.anonymize.base import ANONYMIZERS, Anonymized, Anonymizer, face_rngs
from anonymizer.anonymize import classical  # noqa: F401  (registration)

ANONYMIZERS.register_lazy("generated", "anonymizer.anonymize.generated.operator:GeneratedFace")
ANONYMIZERS.register_lazy("bank", "anonymizer.anonymize.bankface:BankFace")

__all__ = ["ANONYMIZERS", "Anonymized", "Anonymizer", "face_rngs"]
